package azure

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"

	"lifeboat/targets"
)

// grain is the unit the blob is written in: a 512-byte page, or a 4 KiB
// XTS sector when the replica is encrypted.
func (r *Replica) grain() int64 {
	if r.t.opts.Cipher != nil {
		return SectorSize
	}
	return planPage
}

// Apply writes extents through the page blob calls Planner.Plan gives,
// at most Options.Parallel in flight.
//
// Extents that do not start and end on the grain (512 bytes, or 4096 with
// a cipher) are widened by read-modify-write of their edge pages: the edge
// pages are read from the blob, every extent of the batch is replayed on
// them in order, and they are written whole after the batch's aligned
// parts. Reading the blob is safe on a redo: bytes no extent covers are
// never changed by a partial apply.
//
// With a cipher, every call is widened to whole 4 KiB sectors, encrypted
// (tweak = sector number) and sent as Put Page, except whole zero sectors
// where the blob has no pages yet, which are cleared: see encryptCalls.
// Reads treat a sector of all-zero ciphertext (never written, or cleared)
// as zeros; see readAt.
func (r *Replica) Apply(ctx context.Context, exts []targets.Extent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return targets.ErrClosed
	}
	for i, x := range exts {
		n := x.Length()
		if x.Data != nil && x.Len != 0 && x.Len != int64(len(x.Data)) {
			return fmt.Errorf("azure apply %s: extent %d: Len %d, %d bytes of data: %w", r.name, i, x.Len, len(x.Data), targets.ErrOutOfRange)
		}
		if x.Off < 0 || n < 0 || x.Off > r.info.Size || n > r.info.Size-x.Off {
			return fmt.Errorf("azure apply %s: extent %d: %d bytes at %d, replica of %d: %w", r.name, i, n, x.Off, r.info.Size, targets.ErrOutOfRange)
		}
	}
	return r.write(ctx, exts)
}

// write applies extents already checked against the replica's range (or,
// from resize, reaching into the VHD padding). r.mu is held.
func (r *Replica) write(ctx context.Context, exts []targets.Extent) error {
	r.dirty = true
	// Empty extents change nothing; the planner would refuse unaligned ones.
	exts = slices.DeleteFunc(slices.Clone(exts), func(x targets.Extent) bool { return x.Length() == 0 })
	g := r.grain()
	exts, err := r.alignExtents(ctx, exts, g)
	if err != nil {
		return err
	}
	calls, err := r.planner.Plan(exts, int(g))
	if err != nil {
		return fmt.Errorf("azure apply %s: %w", r.name, err)
	}
	if r.t.opts.Cipher != nil {
		calls, err = r.encryptCalls(ctx, calls)
	} else {
		calls, err = r.dropIdleClears(ctx, calls)
	}
	if err != nil {
		return err
	}
	return r.send(ctx, calls)
}

// dropIdleClears keeps of each Clear Pages call only the ranges where the
// blob has pages: clearing pages that were never written (a new or grown
// blob: the holes and zero blocks of an initial replication arrive as ZERO
// records) changes nothing and costs a request each. Get Page Ranges over
// the batch's clears decides (see writtenIn); the batch's own Put Page
// calls do not overlap its clears, so the answer cannot be stale, and a
// redo after a crash decides again from the blob as it is.
func (r *Replica) dropIdleClears(ctx context.Context, calls []Call) ([]Call, error) {
	var clears []span
	for _, c := range calls {
		if c.Kind == ClearPages {
			clears = append(clears, span{c.Off, c.Off + c.Len})
		}
	}
	if len(clears) == 0 {
		return calls, nil
	}
	clears = mergeSpans(clears)
	written, err := r.writtenIn(ctx, clears, planPage)
	if err != nil {
		return nil, err
	}
	out := make([]Call, 0, len(calls))
	for _, c := range calls {
		if c.Kind != ClearPages {
			out = append(out, c)
			continue
		}
		whole := []span{{c.Off, c.Off + c.Len}}
		for _, s := range subtractSpans(whole, subtractSpans(whole, written)) { // whole ∩ written
			out = append(out, Call{Kind: ClearPages, Off: s.lo, Len: s.hi - s.lo})
		}
	}
	return out, nil
}

// alignExtents returns exts with every unaligned extent cut to its aligned
// inside, followed by the whole edge pages holding what the batch leaves in
// them.
func (r *Replica) alignExtents(ctx context.Context, exts []targets.Extent, g int64) ([]targets.Extent, error) {
	var edges []int64
	for _, x := range exts {
		end := x.Off + x.Length()
		if x.Length() == 0 {
			continue
		}
		if x.Off%g != 0 {
			edges = append(edges, x.Off/g*g)
		}
		if end%g != 0 {
			edges = append(edges, end/g*g)
		}
	}
	if len(edges) == 0 {
		return exts, nil
	}
	slices.Sort(edges)
	edges = slices.Compact(edges)
	pages := make(map[int64][]byte, len(edges))
	for _, p := range edges {
		b := make([]byte, g)
		if err := r.readAt(ctx, r.pb, b, p); err != nil {
			return nil, fmt.Errorf("azure apply %s: read page at %d: %w", r.name, p, err)
		}
		pages[p] = b
	}
	out := make([]targets.Extent, 0, len(exts)+len(edges))
	for _, x := range exts {
		n := x.Length()
		end := x.Off + n
		if n == 0 {
			continue
		}
		for _, p := range edges { // replay x on the edge pages it touches
			if p+g <= x.Off || p >= end {
				continue
			}
			lo, hi := max(p, x.Off), min(p+g, end)
			if x.Data != nil {
				copy(pages[p][lo-p:hi-p], x.Data[lo-x.Off:hi-x.Off])
			} else {
				clear(pages[p][lo-p : hi-p])
			}
		}
		if x.Off%g == 0 && end%g == 0 {
			out = append(out, x)
			continue
		}
		lo, hi := alignUp(x.Off, g), end/g*g
		if lo >= hi {
			continue
		}
		y := targets.Extent{Off: lo, Trim: x.Trim}
		if x.Data != nil {
			y.Data = x.Data[lo-x.Off : hi-x.Off]
		} else {
			y.Len = hi - lo
		}
		out = append(out, y)
	}
	for _, p := range edges {
		out = append(out, targets.Extent{Off: p, Data: pages[p]})
	}
	return out, nil
}

// send issues calls, at most Options.Parallel at a time, and returns the
// first error. Calls do not overlap, so their order does not matter.
func (r *Replica) send(ctx context.Context, calls []Call) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, r.t.opts.Parallel)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for _, c := range calls {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := r.sendCall(ctx, c); err != nil {
				once.Do(func() {
					first = err
					cancel()
				})
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// sendCall issues one call, encrypting its data first if it is an
// encrypted Put Page still in plaintext (c.plain).
func (r *Replica) sendCall(ctx context.Context, c Call) (err error) {
	if c.plain != nil {
		bp := sectorBufs.Get().(*[]byte)
		defer func() {
			// Only a request the service accepted has had its body read
			// whole; after an early error answer the transport may still
			// be reading it, so that buffer is left to the collector.
			if err == nil {
				sectorBufs.Put(bp)
			}
		}()
		c.Data = (*bp)[:c.Len]
		if err := r.encryptRange(c.Data, c.plain, c.Off, c.Off+c.Len); err != nil {
			return err
		}
	}
	rng := blob.HTTPRange{Offset: c.Off, Count: c.Len}
	if c.Kind == PutPages {
		_, err = r.pb.UploadPages(ctx, nopCloser{bytes.NewReader(c.Data)}, rng, &pageblob.UploadPagesOptions{AccessConditions: r.ac()})
	} else {
		_, err = r.pb.ClearPages(ctx, rng, &pageblob.ClearPagesOptions{AccessConditions: r.ac()})
	}
	return mapErr(fmt.Sprintf("azure apply %s: %v of %d bytes at %d", r.name, c.Kind, c.Len, c.Off), err)
}

// readAt fills p from pb (the blob or one of its snapshots) at off, which
// with p's length must be on the grain; it decrypts with a cipher.
func (r *Replica) readAt(ctx context.Context, pb *pageblob.Client, p []byte, off int64) error {
	resp, err := pb.DownloadStream(ctx, &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: off, Count: int64(len(p))}})
	if err != nil {
		return mapErr("download", err)
	}
	body := resp.NewRetryReader(ctx, nil)
	defer body.Close()
	if _, err := io.ReadFull(body, p); err != nil {
		return mapErr("download", err)
	}
	if c := r.t.opts.Cipher; c != nil {
		// A sector of zero ciphertext was never written (a new blob, a
		// grown or cleared range): it reads as zeros. A real ciphertext
		// is all zero with probability 2^-32768.
		for i := 0; i < len(p); i += SectorSize {
			sec := p[i : i+SectorSize]
			if allZero(sec) {
				continue
			}
			if err := c.Decrypt(sec, sec, off+int64(i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
