package tracker

import "fmt"

// checkpoint makes the backing store durable and then clears, in the
// persisted bitmap, the regions whose every change a consumer has
// acknowledged. The order matters: a bit may only be cleared once the
// backing store holds that region's acknowledged content durably, or a
// power loss would bring back older backing bytes that no dirty bit
// covers.
func (v *Volume) checkpoint() error {
	v.mu.Lock()
	cands := v.clearable
	v.clearable = nil
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
	v.clearable = append(v.clearable, cands...)
	v.mu.Unlock()
}
