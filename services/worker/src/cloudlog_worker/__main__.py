from cloudlog_worker.worker import main

main()
