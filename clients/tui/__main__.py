from boothstudio.clients.tui.cli import main

main()
