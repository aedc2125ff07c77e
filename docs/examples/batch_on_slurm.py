"""Run a cohort on SLURM through dask-jobqueue (PBS: replace SLURMCluster by PBSCluster).

    pip install 'crossmodalreg[batch]' dask-jobqueue
    cp docs/examples/jobqueue.yaml ~/.config/dask/jobqueue.yaml
    python batch_on_slurm.py cohort.csv /shared/scratch/cohort-out 16

Input files and the output folder must be on a file system every node sees at the same path.
"""

import sys

from dask_jobqueue import SLURMCluster

from CrossModalRegLib.batch import run_cohort

cohort, output_dir, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
with SLURMCluster() as cluster:  # settings from ~/.config/dask/jobqueue.yaml
    cluster.scale(jobs=jobs)
    run = run_cohort(cohort, output_dir, scheduler=cluster.scheduler_address, profile="neuro")
print(f"{len(run.failed)} failed, {len(run.needs_review)} need review; report: {run.report}")
