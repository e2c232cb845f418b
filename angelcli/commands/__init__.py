"""One module per `angel` verb. Module level imports typer and the standard library only."""
