from cloudlog_ingest.serve import main

main()
