from angelcli.cli import main

main()
