// Package memory is an in-memory target for unit tests. Each volume is a
// versioned block map: for every 4 KiB block, the versions written in each
// epoch between recovery points. A point reads, per block, the newest
// version written at or before it, so points cost nothing until blocks
// change. Nothing survives the Target: it is not persistent.
package memory

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"lifeboat/targets"
)

// BlockSize is the granularity of the versioned block map.
const BlockSize = 4096

// Target is an in-memory target. Replicas live as long as the Target;
// closing a Replica and opening it again finds it as it was.
type Target struct {
	mu     sync.Mutex
	vols   map[string]*volume
	closed bool
}

var _ targets.Target = (*Target)(nil)

// New returns an empty in-memory target.
func New() *Target { return &Target{vols: map[string]*volume{}} }

// Properties implements targets.Target.
func (t *Target) Properties() targets.Properties { return targets.Properties{Alignment: 1} }

// Open implements targets.Target.
func (t *Target) Open(ctx context.Context, info targets.VolumeInfo) (targets.Replica, error) {
	if info.ID == "" || info.Size < 0 {
		return nil, fmt.Errorf("open replica: volume id %q, size %d: want an id and a size >= 0", info.ID, info.Size)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("open replica %s: %w", info.ID, targets.ErrClosed)
	}
	v := t.vols[info.ID]
	if v == nil {
		v = &volume{info: info, blocks: map[int64][]version{}}
		t.vols[info.ID] = v
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.open {
		return nil, fmt.Errorf("open replica %s: %w", info.ID, targets.ErrInUse)
	}
	if info.Size != v.info.Size {
		v.resize(info.Size)
	}
	if v.info.Machine != "" {
		info.Machine = v.info.Machine // the owner is the replica's, not the opener's
	}
	v.info = info
	v.open = true
	return &Replica{v: v}, nil
}

// Volumes implements targets.Target.
func (t *Target) Volumes(ctx context.Context) ([]targets.VolumeInfo, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, targets.ErrClosed
	}
	var out []targets.VolumeInfo
	for _, v := range t.vols {
		v.mu.RLock()
		out = append(out, v.info)
		v.mu.RUnlock()
	}
	slices.SortFunc(out, func(a, b targets.VolumeInfo) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Close implements targets.Target. Replicas still open keep working.
func (t *Target) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	return nil
}

// version is a block's content from epoch on (nil data: all zeros).
type version struct {
	epoch uint64
	data  []byte // BlockSize bytes or nil
}

type point struct {
	targets.Point
	epoch   uint64 // the point sees versions of epochs <= epoch
	size    int64
	deleted bool
}

// volume is one replica's storage. Writes go to the current epoch; each
// CreatePoint closes the epoch.
type volume struct {
	mu     sync.RWMutex
	info   targets.VolumeInfo
	state  targets.State
	epoch  uint64
	points []*point
	blocks map[int64][]version // oldest version first
	open   bool
}

// write sets [off, off+len(p)) to p, or to zeros when p is nil, n bytes.
func (v *volume) write(off, n int64, p []byte) {
	for n > 0 {
		b, in := off/BlockSize, off%BlockSize
		c := min(n, BlockSize-in)
		vs := v.blocks[b]
		var cur []byte
		if len(vs) > 0 {
			cur = vs[len(vs)-1].data
		}
		var next []byte
		switch {
		case p == nil && (cur == nil || c == BlockSize):
			next = nil
		case c == BlockSize:
			next = slices.Clone(p[:c])
		default:
			next = make([]byte, BlockSize)
			copy(next, cur)
			if p == nil {
				clear(next[in : in+c])
			} else {
				copy(next[in:], p[:c])
			}
		}
		if len(vs) > 0 && vs[len(vs)-1].epoch == v.epoch {
			vs[len(vs)-1].data = next
		} else if len(vs) > 0 || next != nil {
			vs = append(vs, version{epoch: v.epoch, data: next})
		}
		if len(vs) > 0 {
			v.blocks[b] = vs
		}
		off += c
		n -= c
		if p != nil {
			p = p[c:]
		}
	}
}

// resize changes the size; bytes beyond a smaller size are zeroed first
// (as a write, so points keep them) so that growing again reads zeros.
func (v *volume) resize(size int64) {
	if size < v.info.Size {
		v.write(size, v.info.Size-size, nil)
	}
	v.info.Size = size
}

// readAt reads the content at the given epoch (^0: latest).
func (v *volume) readAt(p []byte, off int64, epoch uint64) {
	for len(p) > 0 {
		b, in := off/BlockSize, off%BlockSize
		c := min(int64(len(p)), BlockSize-in)
		var data []byte
		vs := v.blocks[b]
		for i := len(vs) - 1; i >= 0; i-- {
			if vs[i].epoch <= epoch {
				data = vs[i].data
				break
			}
		}
		if data == nil {
			clear(p[:c])
		} else {
			copy(p[:c], data[in:])
		}
		off += c
		p = p[c:]
	}
}

// prune drops the versions no retained point and not the latest need.
func (v *volume) prune() {
	for b, vs := range v.blocks {
		keep := vs[:0]
		for i, ver := range vs {
			need := i == len(vs)-1
			for _, p := range v.points {
				// ver serves p when it is the newest version <= p.epoch.
				if ver.epoch <= p.epoch && (i == len(vs)-1 || vs[i+1].epoch > p.epoch) {
					need = true
				}
			}
			if need {
				keep = append(keep, ver)
			}
		}
		clear(vs[len(keep):])
		if len(keep) == 1 && keep[0].data == nil {
			delete(v.blocks, b)
			continue
		}
		v.blocks[b] = keep
	}
}

func (v *volume) usage() int64 {
	var n int64
	for _, vs := range v.blocks {
		for _, ver := range vs {
			n += int64(len(ver.data))
		}
	}
	return n
}
