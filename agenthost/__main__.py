from agenthost.cli import main

main()
