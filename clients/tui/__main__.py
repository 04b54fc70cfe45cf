from clients.tui.cli import main

main()
