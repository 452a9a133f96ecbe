package tracker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sync"

	"github.com/cespare/xxhash/v2"

	"lifeboat/hrl"
)

// Bitmap file layout:
//
//	+----------------------------- 4096-byte header page ----------------------------+
//	| magic "LBDIRTY1" | version u32 | res u32 | region size u64 | volume size u64 |
//	| regions u64 | xxhash64 of bytes 0..40 | zero padding                            |
//	+---------------------------------------------------------------------------------+
//	| bit pages: bit i (little-endian u64 words) = region i dirty                     |
//	+---------------------------------------------------------------------------------+
//
// Bits are set and made durable before the write that needs them reaches
// the backing store (write-intent, as md's bitmap does), so the file never
// under-reports after a crash. Clears are written lazily: a crash may leave
// a region marked that is in fact clean, which only costs a resync.
var le = binary.LittleEndian

const (
	bitmapMagic   = "LBDIRTY1"
	bitmapVersion = 1
	bitmapHeader  = 4096
	bitmapPage    = 4096
	bitmapName    = "dirty.bitmap"
)

// Bitmap is a persisted dirty-region bitmap.
type Bitmap struct {
	mu         sync.Mutex
	f          hrl.File
	regionSize int64
	volumeSize int64
	words      []uint64
	dirty      int64              // set bits in words
	pending    map[int64]struct{} // bitmap pages with unwritten clears
	buf        []byte
	err        error // sticky write failure: tracking can no longer be trusted
}

func regionCount(volumeSize, regionSize int64) int64 {
	return (volumeSize + regionSize - 1) / regionSize
}

// openBitmap opens or creates the bitmap file. Whenever the file cannot
// vouch for every region (new, damaged, different geometry) the regions it
// cannot vouch for are marked dirty; reason says why, for the log.
func openBitmap(fsys hrl.FS, path string, regionSize, volumeSize int64) (b *Bitmap, reason string, err error) {
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE, hrl.PrivateFile)
	if err != nil {
		return nil, "", fmt.Errorf("open dirty bitmap: %w", err)
	}
	n := regionCount(volumeSize, regionSize)
	b = &Bitmap{f: f, regionSize: regionSize, volumeSize: volumeSize,
		words: make([]uint64, (n+63)/64), pending: map[int64]struct{}{}, buf: make([]byte, bitmapPage)}
	oldRegions, reason, err := b.load()
	if err != nil {
		f.Close()
		return nil, "", err
	}
	switch {
	case reason != "":
		b.setRange(0, n)
	case oldRegions < n:
		b.setRange(oldRegions, n)
		reason = fmt.Sprintf("volume grew from %d to %d regions; the new regions are dirty", oldRegions, n)
	}
	if err := b.writeAll(); err != nil {
		f.Close()
		return nil, "", err
	}
	return b, reason, nil
}

// reasonNewBitmap is why a bitmap that did not exist starts all dirty.
const reasonNewBitmap = "new bitmap: every region is dirty"

// load reads the file into b.words. It returns how many regions the file
// vouched for, or a reason why it vouches for none.
func (b *Bitmap) load() (int64, string, error) {
	size, err := b.f.Size()
	if err != nil {
		return 0, "", fmt.Errorf("dirty bitmap: %w", err)
	}
	if size == 0 {
		return 0, reasonNewBitmap, nil
	}
	h := make([]byte, bitmapHeader)
	if _, err := b.f.ReadAt(h, 0); err != nil && !errors.Is(err, io.EOF) {
		return 0, "", fmt.Errorf("read dirty bitmap: %w", err)
	}
	switch {
	case string(h[:8]) != bitmapMagic || le.Uint64(h[40:]) != xxhash.Sum64(h[:40]):
		return 0, "bitmap header damaged: every region is dirty", nil
	case le.Uint32(h[8:]) != bitmapVersion:
		return 0, "bitmap version unknown: every region is dirty", nil
	case int64(le.Uint64(h[16:])) != b.regionSize:
		return 0, fmt.Sprintf("region size changed from %d to %d: every region is dirty", le.Uint64(h[16:]), b.regionSize), nil
	}
	old := int64(le.Uint64(h[32:]))
	n := min(old, int64(len(b.words))*64)
	raw := make([]byte, (n+63)/64*8)
	if got, err := b.f.ReadAt(raw, bitmapHeader); err != nil && !(errors.Is(err, io.EOF) && got == len(raw)) {
		return 0, "bitmap truncated: every region is dirty", nil
	}
	for i := range (n + 63) / 64 {
		b.words[i] = le.Uint64(raw[i*8:])
	}
	// Bits past the volume's end (it shrank) are dropped.
	if r := regionCount(b.volumeSize, b.regionSize); r%64 != 0 && int(r/64) < len(b.words) {
		b.words[r/64] &= 1<<(r%64) - 1
	}
	for _, w := range b.words {
		b.dirty += int64(bits.OnesCount64(w))
	}
	return old, "", nil
}

func (b *Bitmap) writeAll() error {
	h := make([]byte, bitmapHeader)
	copy(h, bitmapMagic)
	le.PutUint32(h[8:], bitmapVersion)
	le.PutUint64(h[16:], uint64(b.regionSize))
	le.PutUint64(h[24:], uint64(b.volumeSize))
	le.PutUint64(h[32:], uint64(regionCount(b.volumeSize, b.regionSize)))
	le.PutUint64(h[40:], xxhash.Sum64(h[:40]))
	pages := (int64(len(b.words))*8 + bitmapPage - 1) / bitmapPage
	for p := range pages {
		if err := b.writePage(p); err != nil {
			return err
		}
	}
	if err := b.f.Truncate(bitmapHeader + pages*bitmapPage); err != nil {
		return fmt.Errorf("dirty bitmap: %w", err)
	}
	if _, err := b.f.WriteAt(h, 0); err != nil {
		return fmt.Errorf("dirty bitmap: %w", err)
	}
	return b.sync()
}

// writePage writes bitmap page p (4096 bytes of bits) from memory.
func (b *Bitmap) writePage(p int64) error {
	clear(b.buf)
	w0 := p * bitmapPage / 8
	for i := int64(0); i < bitmapPage/8 && w0+i < int64(len(b.words)); i++ {
		le.PutUint64(b.buf[i*8:], b.words[w0+i])
	}
	if _, err := b.f.WriteAt(b.buf, bitmapHeader+p*bitmapPage); err != nil {
		return fmt.Errorf("write dirty bitmap: %w", err)
	}
	return nil
}

func (b *Bitmap) sync() error {
	if err := b.f.Sync(); err != nil {
		return fmt.Errorf("sync dirty bitmap: %w", err)
	}
	return nil
}

// regions returns the region range [r0, r1) covering [off, off+n).
func (b *Bitmap) regions(off, n int64) (int64, int64) {
	return off / b.regionSize, (off + n + b.regionSize - 1) / b.regionSize
}

// setRange sets bits [r0, r1) in memory and reports whether any was clear.
func (b *Bitmap) setRange(r0, r1 int64) bool {
	changed := false
	for r := r0; r < r1; {
		w, bit := r/64, r%64
		cnt := min(64-bit, r1-r)
		mask := ^uint64(0) >> (64 - cnt) << bit
		if b.words[w]&mask != mask {
			changed = true
			b.dirty += int64(bits.OnesCount64(mask &^ b.words[w]))
			b.words[w] |= mask
		}
		r += cnt
	}
	return changed
}

// Mark records that [off, off+n) is about to change. When that dirties a
// region that was clean, the bitmap is written and synced before Mark
// returns.
func (b *Bitmap) Mark(off, n int64) error {
	if n <= 0 {
		return nil
	}
	r0, r1 := b.regions(off, n)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	if !b.setRange(r0, r1) {
		return nil
	}
	for p := r0 / 64 * 8 / bitmapPage; p <= (r1-1)/64*8/bitmapPage; p++ {
		if err := b.writePage(p); err != nil {
			b.err = err
			return err
		}
		delete(b.pending, p)
	}
	if err := b.sync(); err != nil {
		b.err = err
		return err
	}
	return nil
}

// Clear marks region r clean in memory; it is persisted by the next Sync or
// Mark of the same page.
func (b *Bitmap) Clear(r int64) {
	b.mu.Lock()
	if w := r / 64; w < int64(len(b.words)) {
		if b.words[w]&(1<<(r%64)) != 0 {
			b.dirty--
		}
		b.words[w] &^= 1 << (r % 64)
		b.pending[w*8/bitmapPage] = struct{}{}
	}
	b.mu.Unlock()
}

// Sync writes pending clears.
func (b *Bitmap) Sync() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.pending) == 0 || b.err != nil {
		return b.err
	}
	for p := range b.pending {
		if err := b.writePage(p); err != nil {
			return err
		}
		delete(b.pending, p)
	}
	return b.sync()
}

// IsDirty reports whether region r is dirty.
func (b *Bitmap) IsDirty(r int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.words[r/64]&(1<<(r%64)) != 0
}

// Dirty returns the number of dirty regions.
func (b *Bitmap) Dirty() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dirty
}

// RegionSize is the bytes per bit.
func (b *Bitmap) RegionSize() int64 { return b.regionSize }

// Regions returns the number of regions.
func (b *Bitmap) Regions() int64 { return regionCount(b.volumeSize, b.regionSize) }

// DirtyRanges calls fn for each maximal run of dirty regions, as a byte
// range clamped to the volume size, in ascending order.
func (b *Bitmap) DirtyRanges(fn func(off, n int64) error) error {
	return b.ranges(b.snapshot(), fn)
}

// snapshot copies the dirty bits.
func (b *Bitmap) snapshot() regionSet {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append(regionSet(nil), b.words...)
}

// ranges is DirtyRanges over a snapshot.
func (b *Bitmap) ranges(words regionSet, fn func(off, n int64) error) error {
	n := regionCount(b.volumeSize, b.regionSize)
	for r := int64(0); r < n; {
		if words[r/64]&(1<<(r%64)) == 0 {
			r++
			continue
		}
		s := r
		for r < n && words[r/64]&(1<<(r%64)) != 0 {
			r++
		}
		off := s * b.regionSize
		end := min(r*b.regionSize, b.volumeSize)
		if err := fn(off, end-off); err != nil {
			return err
		}
	}
	return nil
}

// Close syncs pending clears and closes the file.
func (b *Bitmap) Close() error {
	err := b.Sync()
	if cerr := b.f.Close(); err == nil {
		err = cerr
	}
	return err
}
