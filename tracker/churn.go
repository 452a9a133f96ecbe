package tracker

import "sync/atomic"

// churn counts what the workload changed since the volume was opened:
// one atomic add per request, nothing else on the write path. It feeds
// metrics (change rate per volume), not the journal.
type churn struct {
	written atomic.Int64 // bytes of data written (WriteAt)
	zeroed  atomic.Int64 // bytes zeroed or trimmed (WriteZeroes, Trim)
}

// Churn is what the workload changed since the volume was opened.
type Churn struct {
	WrittenBytes int64 // data written with WriteAt
	ZeroedBytes  int64 // zeroed with WriteZeroes or discarded with Trim
}

// Churn returns the bytes written and zeroed through the volume since it
// was opened (requests that succeeded).
func (v *Volume) Churn() Churn {
	return Churn{WrittenBytes: v.churn.written.Load(), ZeroedBytes: v.churn.zeroed.Load()}
}
