from cloudlog_cli.cli import main

main()
