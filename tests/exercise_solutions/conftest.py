# Learner solutions, run only by the grader's child process: pytest must not import them.
collect_ignore_glob = ["*.py"]
