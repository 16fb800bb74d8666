"""Client partitions of a dataset's training split (`cmi partition`): label-skewed, IID and natural
splits, missing modalities, statistics and heatmap; `read_partition` loads one for training."""

from pipelines.partitioning.stage import PartitionOutcome, PartitionSettings, partition_samples, run_partition
from pipelines.partitioning.store import PartitionData, read_partition

__all__ = [
    "PartitionData", "PartitionOutcome", "PartitionSettings", "partition_samples", "read_partition", "run_partition",
]
