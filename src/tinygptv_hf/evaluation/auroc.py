"""Area under the ROC curve from per-item scores, without scikit-learn (which the package does not need
otherwise, and which `evaluate`'s own `roc_auc` module imports)."""


def roc_auc(labels: list[int], scores: list[float]) -> float:
    """The probability that a random positive item scores above a random negative one, ties counting half (the
    Mann-Whitney statistic, equal to the trapezoidal area under the ROC curve). Labels are 1 or 0."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores.")
    if set(labels) - {0, 1}:
        raise ValueError(f"Labels must be 0 or 1, got {sorted(set(labels) - {0, 1})}.")
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        raise ValueError("AUROC needs at least one positive and one negative item.")
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    positive_rank_sum = sum(rank for rank, label in zip(ranks, labels, strict=True) if label)
    return (positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
