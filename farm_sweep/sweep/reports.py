"""The keys of a trial's per-epoch report that the trial, the pruning scheduler, the tracker and the runner
share (one owner, so none of them imports another for a string)."""

STEP_KEY = "epoch"  # the epoch just finished
FINAL_STEP_KEY = "epochs_planned"  # the epochs the trial plans, so a scheduler knows the last one
PRUNED_KEY = "pruned"  # added by the pruning scheduler to the report on which it stops a trial
EPOCH_METRIC_KEY = "epoch_nll_image"  # a final report's own validation value, where its nll_image is the best epoch's
