"""The command line: thin functions over apply/plan/render, tested in-process."""
