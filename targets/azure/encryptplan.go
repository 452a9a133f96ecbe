package azure

import (
	"context"
	"fmt"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"

	"lifeboat/targets"
)

// encryptCalls turns a plan into calls on whole 4 KiB sectors for an
// encrypted replica: runs of adjacent calls are joined and cut at
// MaxPutPage; sectors holding data are encrypted and sent as Put Page.
//
// A sector that is all zero (no PutPages of the plan touches it: the
// planner sends every all-zero page as a clear) is
//   - cleared where the blob has no pages in it (Get Page Ranges, one
//     request per batch over the span of its zero sectors): the sector
//     reads as zeros before and after, so the clear changes nothing and
//     uploads nothing. This keeps the initial replication of a sparse
//     volume sparse: without it every ZERO record would upload 4 KiB of
//     ciphertext and bill it as a written page.
//   - written as encrypted zeros where the blob has pages: clearing data
//     would show in Get Page Ranges which sectors became zero (trims),
//     which the ciphertext of zeros does not.
//
// What a storage account learns: which sectors were never written with
// data since the blob was created (the holes of the initial replication),
// as with any sparse encrypted image; not when a written sector becomes
// zero. Reads treat an all-zero ciphertext sector as zeros (readAt), so a
// cleared sector reads correctly; a redo after a crash repeats the same
// decision from the blob's current pages, and either choice reads as
// zeros, so it is idempotent.
func (r *Replica) encryptCalls(ctx context.Context, calls []Call) ([]Call, error) {
	type run struct {
		lo, hi int64
		calls  []Call
	}
	var runs []run
	var zeros []span
	for i := 0; i < len(calls); {
		j, end := i+1, calls[i].Off+calls[i].Len
		for j < len(calls) && calls[j].Off == end {
			end += calls[j].Len
			j++
		}
		start := calls[i].Off
		if start%SectorSize != 0 || end%SectorSize != 0 {
			return nil, fmt.Errorf("azure apply %s: planned run %d..%d is not sector aligned: %w", r.name, start, end, targets.ErrUnaligned)
		}
		runs = append(runs, run{start, end, calls[i:j]})
		cur := start
		for _, c := range calls[i:j] {
			if c.Kind != PutPages {
				continue
			}
			if lo := c.Off / SectorSize * SectorSize; lo > cur {
				zeros = append(zeros, span{cur, lo})
			}
			cur = max(cur, alignUp(c.Off+c.Len, SectorSize))
		}
		if cur < end {
			zeros = append(zeros, span{cur, end})
		}
		i = j
	}
	written, err := r.writtenIn(ctx, zeros, SectorSize)
	if err != nil {
		return nil, err
	}
	clears := subtractSpans(zeros, written)
	var out []Call
	for _, rn := range runs {
		cur := rn.lo
		for _, put := range subtractSpans([]span{{rn.lo, rn.hi}}, clears) {
			if put.lo > cur {
				out = append(out, Call{Kind: ClearPages, Off: cur, Len: put.lo - cur})
			}
			for s := put.lo; s < put.hi; s += MaxPutPage {
				// Encrypted when sent, in parallel (see send).
				out = append(out, Call{Kind: PutPages, Off: s, Len: min(s+MaxPutPage, put.hi) - s, plain: rn.calls})
			}
			cur = put.hi
		}
		if cur < rn.hi {
			out = append(out, Call{Kind: ClearPages, Off: cur, Len: rn.hi - cur})
		}
	}
	return out, nil
}

// sectorBufs hold the ciphertext of one Put Page while it is sent.
var sectorBufs = sync.Pool{New: func() any { b := make([]byte, MaxPutPage); return &b }}

// encryptRange fills buf (e-s bytes) with [s, e), whole sectors, holding
// the data of the PutPages calls there (zeros elsewhere), encrypted.
func (r *Replica) encryptRange(buf []byte, calls []Call, s, e int64) error {
	clear(buf)
	for _, c := range calls {
		if c.Kind != PutPages || c.Off+c.Len <= s || c.Off >= e {
			continue
		}
		lo, hi := max(c.Off, s), min(c.Off+c.Len, e)
		copy(buf[lo-s:hi-s], c.Data[lo-c.Off:hi-c.Off])
	}
	if err := r.t.opts.Cipher.Encrypt(buf, buf, s); err != nil {
		return fmt.Errorf("azure apply %s: %w", r.name, err)
	}
	return nil
}

// pageRangesGap: spans closer than this are asked about in one Get Page
// Ranges; farther apart, each cluster has its own, so that a batch with
// zeros at both ends of a large, fragmented blob does not list every range
// in between.
const pageRangesGap = 64 << 20

// writtenIn lists where the blob has pages within spans (sorted, disjoint),
// widened to whole units of g bytes, with one Get Page Ranges per cluster
// of nearby spans. If the service cannot answer, every span counts as
// written: clearing or writing encrypted zeros is always correct, only
// dearer; a context that ended is an error.
func (r *Replica) writtenIn(ctx context.Context, spans []span, g int64) ([]span, error) {
	var out []span
	for i := 0; i < len(spans); {
		j := i + 1
		for j < len(spans) && spans[j].lo-spans[j-1].hi <= pageRangesGap {
			j++
		}
		w, err := r.writtenRanges(ctx, spans[i].lo, spans[j-1].hi, g)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			r.t.log.Warn("azure: Get Page Ranges failed; clearing as if every page were written", "blob", r.name, "err", err)
			w = spans[i:j]
		}
		out = append(out, w...)
		i = j
	}
	return mergeSpans(out), nil
}

// writtenRanges lists where the blob has pages in [lo, hi), widened to
// whole units of g bytes, as sorted, merged spans.
func (r *Replica) writtenRanges(ctx context.Context, lo, hi, g int64) ([]span, error) {
	var out []span
	pager := r.pb.NewGetPageRangesPager(&pageblob.GetPageRangesOptions{Range: blob.HTTPRange{Offset: lo, Count: hi - lo}})
	for pager.More() {
		resp, err := pager.NextPage(ctx)
		if err != nil {
			return nil, mapErr(fmt.Sprintf("azure apply %s: page ranges of %d..%d", r.name, lo, hi), err)
		}
		for _, pr := range resp.PageList.PageRange {
			if pr.Start == nil || pr.End == nil {
				continue
			}
			s := max(*pr.Start/g*g, lo)
			e := min(alignUp(*pr.End+1, g), hi)
			if s < e {
				out = append(out, span{s, e})
			}
		}
	}
	return mergeSpans(out), nil
}
