from cloudlog.cli import main

main()
