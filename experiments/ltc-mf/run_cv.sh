#!/usr/bin/env bash
# Grouped 5-fold cross-validation of the multi-fidelity model (experiment=mf) and the Step IV chain
# (step2 on AFLOW -> step4_abinitio -> step4) on the same folds, at about equal compute.
# Usage: experiments/ltc-mf/run_cv.sh LOG_DIR [FOLDS...]   (resumable: completed jobs are skipped)
# Settings (environment): SEEDS (default [1,2,3]), EPOCHS (50), AFLOW_MAX (1000: AFLOW subsampled per fold),
# CV_SEED (0), STAGES ("mf chain": the multi-fidelity model, then the chain; each over all FOLDS before the next;
# "mfft" fine-tunes the stage-mf model of each seed on the measured values at the measured fidelity),
# EXTRA (more overrides, e.g. "trainer.limit_train_batches=2").
set -euo pipefail
LOG_DIR=${1:?usage: run_cv.sh LOG_DIR [FOLDS...]}
shift
FOLDS=${*:-0 1 2 3 4}
SEEDS=${SEEDS:-[1,2,3]}
EPOCHS=${EPOCHS:-50}
AFLOW_MAX=${AFLOW_MAX:-1000}
CV_SEED=${CV_SEED:-0}
EXTRA=${EXTRA:-}
STAGES=${STAGES:-mf chain}
for stage in $STAGES; do
  for fold in $FOLDS; do
    common=(-m "paths.log_dir=$LOG_DIR" "group=fold$fold" "seeds=$SEEDS" threads=1 hydra/launcher=basic logger=csv
      callbacks.progress_bar=null "cross_eval=[]" "max_per_source=$AFLOW_MAX" "trainer.max_epochs=$EPOCHS"
      "+data.holdout={folds:5,fold:$fold,seed:$CV_SEED,over:[aflow,dataset1,dataset2,measured]}")
    if [ "$stage" = mf ]; then
      # shellcheck disable=SC2086
      paraisite-train "${common[@]}" experiment=mf $EXTRA
    elif [ "$stage" = mfft ]; then
      # shellcheck disable=SC2016,SC2086
      paraisite-train "${common[@]}" experiment=step4 task_name=mf_ft 'data.fidelities=[agl,ab-initio,measured]' \
        'init_from="${paths.log_dir}/${group}/${run_path:mf,MF,${seed}}"' $EXTRA
    else
      # shellcheck disable=SC2086
      paraisite-train "${common[@]}" experiment=step2 data=aflow $EXTRA
      # shellcheck disable=SC2086
      paraisite-train "${common[@]}" experiment=step4_abinitio $EXTRA
      # shellcheck disable=SC2086
      paraisite-train "${common[@]}" experiment=step4 $EXTRA
    fi
  done
done
