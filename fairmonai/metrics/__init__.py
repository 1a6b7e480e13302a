"""Fairness and synthesis-quality metrics (plugin kind ``metric``, entry-point group ``fairmonai.metrics``).

Everything here is numpy / scipy / torch; fairlearn and scikit-learn are test references only.
Group arguments (``groups`` / ``sensitive_features``) accept fairmonai group keys (``Cohort.keys()``),
a mapping ``attribute -> values`` (intersectional when several), a DataFrame or 1-D / 2-D arrays.

=================================  ==================================================  ==============================
Plugin name                        Definition                                          Source
=================================  ==================================================  ==============================
``group_metric_frame``             any ``fn(y_true, y_pred)`` overall and per group;   fairlearn ``MetricFrame``
                                   ``difference`` = max - min, ``ratio`` = min / max
                                   ``n_boot=``: percentile-bootstrap intervals,        fairlearn ``n_boot``
                                   resampled within groups (``interval``)
``cumulative_group_metric``        the same, accumulated over batches (ignite)         MONAI ``Cumulative``
``group_bootstrap_ci``             per-group mean (any statistic) of per-sample        stratified bootstrap
                                   scores (Dice per image) with intervals (a
                                   function; no entry point of its own)
``demographic_parity_difference``  ``max_g P(yhat=1|g) - min_g P(yhat=1|g)``           Dwork 2012; fairlearn; FairGen
``equal_opportunity_difference``   ``max_g TPR_g - min_g TPR_g``                       Hardt 2016; fairlearn; FairGen
``equalized_odds_difference``      ``max(dTPR, dFPR)``                                 Hardt 2016; fairlearn
``nar``                            ``(max_g acc_g - min_g acc_g) / mean_g acc_g``      FairGen (Groh 2021)
``balanced_accuracy``              ``(TPR + TNR) / 2``; multi-class mean recall        Skorupko et al. Eq. 1
``auc_per_group``                  ROC AUC per group, Mann-Whitney rank statistic      FairDiffusion, FairGen
``equity_scaled``                  ``M / (1 + sum_g |M_g - M|)`` (``sum_abs``) or      FairSeg; FairDiff Eq. 7
                                   ``M / (1 + stdev_g M_g)`` (``stdev``, ddof = 1)
``es_dice``, ``es_iou``            ES of per-sample Dice / IoU (per class: cup, rim)   FairSeg; FairDiff Tables 2-5
``es_auc``, ``es_accuracy``        ES of ROC AUC / accuracy (FairGen's ESSP)           FairDiffusion; FairGen
``fairdiff_fairness``              ``- sum_attributes Var_g(M_g)`` (ddof = 0)          FairDiff Eq. 1
``fid``                            Frechet distance of feature Gaussians               Heusel 2017
``fid_per_group``                  FID per group + variance of per-group FID           FairGen; FairDiffusion
``feature_extractor``              nn.Module (+ local weights file) -> features;       no downloads
                                   "FID (domain features)" unless Inception
``chamfer_distance``               mean squared NN distance, both directions           Luo & Hu 2021
``mmd_cov``                        MMD = mean_ref min_gen CD; COV = covered ref share  Luo & Hu 2021; FairDiff Tab. 1
=================================  ==================================================  ==============================

Edge cases: absent groups are skipped in differences (declared groups show count 0 and NaN);
one group gives difference 0 and ratio 1 (stdev-ES: stdev taken as 0); undefined group values
(TPR without positives, AUC with one true class) are NaN, skipped and warned about
(:class:`UndefinedMetricWarning`); NaN inputs and labels outside ``classes`` raise ``ValueError``.
"""

from fairmonai.metrics.fairness import (
    accuracy,
    auc_per_group,
    balanced_accuracy,
    balanced_accuracy_score,
    demographic_parity_difference,
    dice_per_sample,
    equal_opportunity_difference,
    equalized_odds_difference,
    equity_scaled,
    equity_scaled_mean,
    es_accuracy,
    es_auc,
    es_dice,
    es_iou,
    fairdiff_fairness,
    fairdiff_fairness_from_values,
    false_positive_rate,
    iou_per_sample,
    nar,
    normalized_range,
    roc_auc_score,
    selection_rate,
    true_negative_rate,
    true_positive_rate,
)
from fairmonai.metrics.group import (
    CumulativeGroupMetric,
    GroupKey,
    GroupMetricFrame,
    UndefinedMetricWarning,
    group_bootstrap_ci,
    group_metric_frame,
    group_name,
    resolve_groups,
)
from fairmonai.metrics.synthesis import (
    DOMAIN_FID_NAME,
    FID_NAME,
    FeatureExtractor,
    chamfer_distance,
    feature_statistics,
    fid,
    fid_per_group,
    frechet_distance,
    mmd_cov,
    mmd_cov_from_distances,
    pairwise_chamfer,
)

__all__ = [
    "CumulativeGroupMetric",
    "DOMAIN_FID_NAME",
    "FID_NAME",
    "FeatureExtractor",
    "GroupKey",
    "GroupMetricFrame",
    "UndefinedMetricWarning",
    "accuracy",
    "auc_per_group",
    "balanced_accuracy",
    "balanced_accuracy_score",
    "chamfer_distance",
    "demographic_parity_difference",
    "dice_per_sample",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "equity_scaled",
    "equity_scaled_mean",
    "es_accuracy",
    "es_auc",
    "es_dice",
    "es_iou",
    "fairdiff_fairness",
    "fairdiff_fairness_from_values",
    "false_positive_rate",
    "feature_statistics",
    "fid",
    "fid_per_group",
    "frechet_distance",
    "group_bootstrap_ci",
    "group_metric_frame",
    "group_name",
    "iou_per_sample",
    "mmd_cov",
    "mmd_cov_from_distances",
    "nar",
    "normalized_range",
    "pairwise_chamfer",
    "resolve_groups",
    "roc_auc_score",
    "selection_rate",
    "true_negative_rate",
    "true_positive_rate",
]
