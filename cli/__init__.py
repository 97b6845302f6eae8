"""gpt2-cockpit's command line: the one entry point that talks to the user's terminal.

main.py parses the arguments and hands each command to commands.py, which calls the engine
(gpt2_cockpit.engine, which computes and never prints) or opens the cockpit (gpt2_cockpit.tui).
"""
