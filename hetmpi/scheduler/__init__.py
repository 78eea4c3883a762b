"""Job scripts for PBS and Slurm: checked settings, Jinja2 rendering, submission, status.

directives.SchedulerConfig holds the checked ``scheduler:`` section, render turns it into
scripts from hetmpi/templates/, submit runs sbatch/qsub/squeue/qstat, and commands holds the
``hetmpi submit`` and ``hetmpi status`` click commands.
"""
