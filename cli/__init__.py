"""gpt2-cockpit's command line: the code that talks to the user's terminal, and the only code that
opens the cockpit (gpt2_cockpit.tui).

main.py parses the arguments (where a user's mistake becomes one sentence) and hands each command
to commands.py, compare.py (compare, metrics, plot) or evaluate.py (eval); they call the engine
(gpt2_cockpit.engine, which computes and never prints) and print what it returns.
"""
