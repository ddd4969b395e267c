from rlm_service.repl_guest.main import main

main()
