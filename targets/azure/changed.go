package azure

import (
	"context"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"

	"lifeboat/targets"
)

var _ targets.ChangeLister = (*Replica)(nil)

// ChangedSince implements targets.ChangeLister with Get Page Ranges Diff of
// the blob against the point's snapshot: both the pages written and the
// pages cleared since then count as changed. Like Points, it needs no
// lease and reads what the blob holds now, committed or not.
//
// Offsets are the volume's: the blob is the volume from offset 0 (a fixed
// VHD), and with a cipher each 4 KiB sector is encrypted in place (tweak =
// sector number), so a changed ciphertext byte is a changed plaintext
// sector at the same offset; ranges are widened to whole sectors then. The
// VHD padding and footer are cut off (ranges end at the volume's size),
// and a volume grown since the point lists the grown part whole.
//
// It over-reports pages rewritten with the same bytes (and, with a
// cipher, zero sectors rewritten as encrypted zeros). The Azure service
// may return coarser ranges than were written; Azurite returns every page
// range of the blob, written before the point or not.
func (r *Replica) ChangedSince(ctx context.Context, seq uint64) ([]targets.Range, error) {
	r.mu.Lock()
	closed, size := r.closed, r.info.Size
	r.mu.Unlock()
	if closed {
		return nil, targets.ErrClosed
	}
	s, err := r.find(ctx, seq)
	if err != nil {
		return nil, err
	}
	g := r.grain()
	var spans []span
	add := func(start, end *int64) { // inclusive end, as the service gives it
		if start != nil && end != nil {
			spans = append(spans, span{*start / g * g, min(alignUp(*end+1, g), size)})
		}
	}
	pager := r.pb.NewGetPageRangesDiffPager(&pageblob.GetPageRangesDiffOptions{
		PrevSnapshot: &s.id, Range: blob.HTTPRange{Offset: 0, Count: alignUp(size, g)}})
	for pager.More() {
		resp, err := pager.NextPage(ctx)
		if err != nil {
			return nil, mapErr(fmt.Sprintf("azure %s: changes since point %d", r.name, seq), err)
		}
		for _, pr := range resp.PageList.PageRange {
			add(pr.Start, pr.End)
		}
		for _, cr := range resp.PageList.ClearRange {
			add(cr.Start, cr.End)
		}
	}
	if s.size < size {
		spans = append(spans, span{s.size, size}) // grown since the point
	}
	spans = mergeSpans(spans)
	out := make([]targets.Range, len(spans))
	for i, x := range spans {
		out[i] = targets.Range{Off: x.lo, Len: x.hi - x.lo}
	}
	return out, nil
}
