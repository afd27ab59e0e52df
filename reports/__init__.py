"""The versioned JSON document (the contract) and its renderers: profile/ (terminal, HTML, diff),
sweep/ (terminal, HTML), doctor and snapshot in the terminal. A library: imports core only.
"""
