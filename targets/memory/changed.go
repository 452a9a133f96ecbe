package memory

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	"lifeboat/targets"
)

var _ targets.ChangeLister = (*Replica)(nil)

// ChangedSince implements targets.ChangeLister: the 4 KiB blocks with a
// version written after the point whose content differs from the point's,
// and everything past the point's size when the volume grew since. It
// reports no block written back to the point's content; ranges end at the
// volume's size.
func (r *Replica) ChangedSince(ctx context.Context, seq uint64) ([]targets.Range, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	v := r.v
	v.mu.RLock()
	defer v.mu.RUnlock()
	i, ok := v.find(seq)
	if !ok {
		return nil, fmt.Errorf("changes since point %d of %s: %w", seq, v.info.ID, targets.ErrNotFound)
	}
	p, size := v.points[i], v.info.Size
	var changed []int64
	for b, vs := range v.blocks {
		if vs[len(vs)-1].epoch <= p.epoch || b*BlockSize >= min(size, p.size) {
			continue // not written since, or in the grown part added below
		}
		var then []byte
		for _, ver := range slices.Backward(vs) {
			if ver.epoch <= p.epoch {
				then = ver.data
				break
			}
		}
		if !sameBlock(then, vs[len(vs)-1].data) {
			changed = append(changed, b)
		}
	}
	return targets.ChangedBlocks(changed, BlockSize, p.size, size), nil
}

// sameBlock compares two versions' data (nil: zeros).
func sameBlock(a, b []byte) bool {
	switch {
	case a == nil && b == nil:
		return true
	case a == nil:
		a = make([]byte, BlockSize)
	case b == nil:
		b = make([]byte, BlockSize)
	}
	return bytes.Equal(a, b)
}
