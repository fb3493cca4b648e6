"""Train and evaluate one experiment (a method on a dataset with shots, seed and options), without Dagster.

The Dagster assets call these functions; so can a notebook or a script. One function per decision, one module per
stage of an experiment:

- inputs: what an experiment reads (ExperimentInputs) and what its method takes for images (features or pixels);
- classifiers: a method's classifier on the frozen backbone, and whether it can run there;
- preparation: round 0 of its pseudolabels, the diffusion variations of its few-shot images;
- training_sets: the labels it trains on (base-to-new: base only), its few-shot training set, its validation rows;
- training: train_experiment, on the few-shot subset or through the pool rounds (trains_from_pool);
- checkpoints: the learned prompt's folder and the config record that rebuilds it;
- scoring: the learned prompt on a test split (in-domain evaluation, transfer to another dataset's classes).
"""

from models.experiments.checkpoints import (CHECKPOINT_CONFIG, CHECKPOINT_PSEUDOLABEL_ROUNDS, CHECKPOINT_WEIGHTS,
                                            checkpoint_config, load_prompt_checkpoint, read_checkpoint_config,
                                            save_prompt_checkpoint)
from models.experiments.classifiers import MethodNotApplicableError, build_classifier, check_method_applies
from models.experiments.inputs import (ExperimentInputs, features_for_images, method_inputs_for_images,
                                       preprocessed_images)
from models.experiments.preparation import RoundZeroPseudolabels, augment_fewshot_images, round_zero_pseudolabels
from models.experiments.scoring import (EvaluationScores, SplitPredictions, checkpoint_test_predictions,
                                        evaluation_predictions, evaluation_scores, evaluation_splits,
                                        generalized_labels, predict, predict_log_probabilities, predictions_frame,
                                        pseudolabel_round_rows, transferred_prompt_scores)
from models.experiments.training import (TrainedPrompt, epoch_logger, optimization_config, train_experiment,
                                         train_from_pool, train_prompts, trains_from_pool)
from models.experiments.training_sets import (TrainingSet, assemble_training_set, augmented_rows,
                                              combine_training_sets, fewshot_training_set, pool_validation_rows,
                                              trained_labels)

__all__ = [
    "CHECKPOINT_CONFIG", "CHECKPOINT_PSEUDOLABEL_ROUNDS", "CHECKPOINT_WEIGHTS", "EvaluationScores",
    "ExperimentInputs", "MethodNotApplicableError", "RoundZeroPseudolabels", "SplitPredictions", "TrainedPrompt",
    "TrainingSet", "assemble_training_set", "augment_fewshot_images", "augmented_rows", "build_classifier",
    "check_method_applies", "checkpoint_config", "checkpoint_test_predictions", "combine_training_sets",
    "epoch_logger", "evaluation_predictions", "evaluation_scores", "evaluation_splits", "features_for_images",
    "fewshot_training_set", "generalized_labels", "load_prompt_checkpoint", "method_inputs_for_images",
    "optimization_config", "pool_validation_rows", "predict", "predict_log_probabilities", "predictions_frame",
    "preprocessed_images", "pseudolabel_round_rows", "read_checkpoint_config", "round_zero_pseudolabels",
    "save_prompt_checkpoint", "trained_labels", "train_experiment", "train_from_pool", "train_prompts",
    "trains_from_pool", "transferred_prompt_scores",
]
