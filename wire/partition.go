package wire

import (
	"crypto/md5"
	"encoding/binary"
	"strconv"
)

// Partition returns the partition of key among n partitions: the first 4
// bytes of the key's MD5, as a big-endian uint32, modulo n. This is
// ClusterKit's hash, so keys land where a ClusterKit client expects. MD5 is
// used for spread and compatibility, not security. n must be positive.
func Partition(key []byte, n int) int {
	if n <= 0 {
		panic("wire: Partition with a non-positive partition count")
	}
	sum := md5.Sum(key)
	return int(uint64(binary.BigEndian.Uint32(sum[:4])) % uint64(n))
}

// PartitionName is a partition's name in the /cluster document:
// "partition-<p>" (hash_config.format "partition-%d").
func PartitionName(p int) string {
	return "partition-" + strconv.Itoa(p)
}
