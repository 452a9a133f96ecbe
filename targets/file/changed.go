package file

import (
	"context"
	"fmt"

	"lifeboat/targets"
)

var _ targets.ChangeLister = (*Replica)(nil)

// ChangedSince implements targets.ChangeLister from the undo logs alone,
// reading no data. The blocks that may differ from point P_i are those
// with an entry in the undo log of P_i or of a newer point: the first
// overwrite of a block after P_j logs its before-image in P_j's log.
//
// Apply always logs in the newest point's log, before it writes
// replica.img, whether or not a Commit follows, so changes applied after
// the last point (committed or not) are included; after a crash too, since
// Open keeps the intact tail of the newest log. DeletePoint keeps the union
// of the logs of a point and the newer ones: deleting the oldest point
// drops a log only it reads, deleting P_i moves into P_i-1's log the
// entries it lacks.
//
// It over-reports: whole 4 KiB blocks (a partial write, a block rewritten
// with the same bytes or changed and changed back), and everything past
// the point's size when the volume grew since. Ranges end at the volume's
// current size (a shrunk volume's cut part is not listed).
func (r *Replica) ChangedSince(ctx context.Context, seq uint64) ([]targets.Range, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Readers hold mu for reading: the holder of wmu changes the point
	// list and the indexes only with mu held for writing.
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		return nil, fmt.Errorf("replica %s: %w", r.info.ID, targets.ErrClosed)
	}
	i, ok := r.find(seq)
	if !ok {
		r.mu.RUnlock()
		return nil, fmt.Errorf("changes since point %d of %s: %w", seq, r.info.ID, targets.ErrNotFound)
	}
	pointSize, size := r.points[i].Size, r.info.Size
	var blocks []int64
	for _, u := range r.logs[i:] {
		if u.open != nil {
			for b := range u.open {
				blocks = append(blocks, b)
			}
		} else {
			for _, e := range u.sorted {
				blocks = append(blocks, e.block)
			}
		}
	}
	r.mu.RUnlock()

	// The part grown since the point is not all logged: it is listed whole.
	return targets.ChangedBlocks(blocks, blockSize, pointSize, size), nil
}
