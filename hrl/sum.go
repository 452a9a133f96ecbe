package hrl

import "github.com/cespare/xxhash/v2"

// PayloadSum is the checksum of a record's payload. For WRITE and RESYNC
// records it is the xxhash64 of the little-endian xxhash64 of each block of
// the payload (blockSize bytes each, the last one possibly short), so that
// the writer hashes every byte once: the same block hashes serve dedupe. For
// every other record it is the xxhash64 of the payload.
//
// sums, if not nil, holds the hashes of the payload's blocks where they are
// already known (a zero entry is computed); buf is scratch space.
func PayloadSum(t RecordType, payload []byte, blockSize int, sums []uint64, buf *[]byte) uint64 {
	if t != TypeWrite && t != TypeResync {
		return xxhash.Sum64(payload)
	}
	n := (len(payload) + blockSize - 1) / blockSize
	if cap(*buf) < 8*n {
		*buf = make([]byte, 8*n)
	}
	b := (*buf)[:8*n]
	for i := range n {
		var s uint64
		if i < len(sums) {
			s = sums[i]
		}
		if s == 0 {
			s = xxhash.Sum64(payload[i*blockSize : min((i+1)*blockSize, len(payload))])
		}
		le.PutUint64(b[8*i:], s)
	}
	return xxhash.Sum64(b)
}
