package tracker

import (
	"fmt"
	"time"
)

// clearCand is a region whose every change was acknowledged at acked: a
// checkpoint clears its bit once ClearDelay has passed since, unless it
// was written again.
type clearCand struct {
	r     int64
	acked time.Time
}

// checkpoint makes the backing store durable and then clears, in the
// persisted bitmap, the regions whose every change a consumer has
// acknowledged at least ClearDelay ago (all of them with all: Close).
// The order matters: a bit may only be cleared once the backing store
// holds that region's acknowledged content durably, or a power loss would
// bring back older backing bytes that no dirty bit covers. The delay only
// keeps bits set longer, so the bitmap never under-reports; it spares the
// sync of Mark for a region written again soon after its acknowledgement,
// which, while replicating, is most writes.
func (v *Volume) checkpoint(all bool) error {
	v.mu.Lock()
	var cands []int64
	var keep []clearCand
	due := time.Now().Add(-v.ClearDelay)
	for _, c := range v.clearable {
		switch {
		case all || !c.acked.After(due):
			cands = append(cands, c.r)
		default:
			keep = append(keep, c)
		}
	}
	v.clearable = keep
	v.mu.Unlock()
	if len(cands) > 0 {
		// Barrier: every write that started before now has reached the
		// backing store (writes hold their range lock until then).
		v.locks.barrier()
	}
	if err := v.backing.Sync(); err != nil {
		v.requeue(cands)
		return fmt.Errorf("sync backing store %s: %w", v.Path, err)
	}
	for _, r := range cands {
		// Under the region's range lock a write to it is either entirely
		// before (it re-touched the region: keep the bit) or entirely after
		// (its Mark sets the bit again and persists it).
		off, end := r*v.RegionSize, min((r+1)*v.RegionSize, v.size)
		v.locks.lock(off, end)
		v.mu.Lock()
		if _, again := v.touched[r]; !again && !v.pinned.has(r) {
			v.bitmap.Clear(r)
		}
		v.mu.Unlock()
		v.locks.unlock(off, end)
	}
	return v.bitmap.Sync()
}

func (v *Volume) requeue(cands []int64) {
	v.mu.Lock()
	for _, r := range cands {
		v.clearable = append(v.clearable, clearCand{r: r}) // due: the sync had already passed
	}
	v.mu.Unlock()
}
