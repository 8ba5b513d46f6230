from metakl.cli import main

main()
