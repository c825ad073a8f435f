"""`python -m study.run STUDY ...`: the command line (`study.runner.cli`)."""

from study.runner.cli import exit_now, main

if __name__ == "__main__":
    exit_now(main())
