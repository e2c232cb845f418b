"""One module per `angel` verb; each exposes one typer command function (see angelcli/cli.py COMMANDS).

Module level imports typer and the standard library only."""
