package azure

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"
	"github.com/google/uuid"

	"lifeboat/targets"
)

// snap is a recovery point and the blob snapshot holding it.
type snap struct {
	p     targets.Point
	id    string // snapshot timestamp
	size  int64  // volume size when the point was made
	token string // content token: equal tokens, equal content
}

// metaContent is the snapshot metadata key of the content token.
const metaContent = "lifeboatcontent"

func samePoint(a, b targets.Point) bool {
	return a.Seq == b.Seq && a.Generation == b.Generation && a.Kind == b.Kind && a.Name == b.Name && a.Time.Equal(b.Time)
}

// snaps lists the blob's snapshots that are recovery points, by seq.
func (r *Replica) snaps(ctx context.Context) ([]snap, error) { return r.t.snaps(ctx, r.name) }

// snaps lists the snapshots of the blob name that are recovery points, by
// seq. It needs no lease: a failover reads points of a replica that
// another (maybe dead) process server holds.
func (t *Target) snaps(ctx context.Context, name string) ([]snap, error) {
	var out []snap
	pager := t.cont.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
		Prefix: &name, Include: container.ListBlobsInclude{Snapshots: true, Metadata: true}})
	for pager.More() {
		resp, err := pager.NextPage(ctx)
		if err != nil {
			return nil, mapErr("azure list points of "+name, err)
		}
		for _, it := range resp.Segment.BlobItems {
			if it.Name == nil || *it.Name != name || it.Snapshot == nil || *it.Snapshot == "" {
				continue
			}
			p, err := parsePointMetadata(it.Metadata)
			if err != nil {
				t.log.Warn("azure: snapshot is not a recovery point", "blob", name, "snapshot", *it.Snapshot, "err", err)
				continue
			}
			s := snap{p: p, id: *it.Snapshot}
			s.token, _ = get(it.Metadata, metaContent)
			if v, ok := get(it.Metadata, metaSize); ok {
				s.size, _ = strconv.ParseInt(v, 10, 64)
			}
			if s.size <= 0 {
				return nil, fmt.Errorf("azure list points of %s: snapshot %s: metadata %s missing or invalid", name, *it.Snapshot, metaSize)
			}
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b snap) int {
		return cmp.Or(cmp.Compare(a.p.Seq, b.p.Seq), cmp.Compare(a.id, b.id))
	})
	return out, nil
}

func (r *Replica) find(ctx context.Context, seq uint64) (snap, error) {
	return r.t.find(ctx, r.name, seq)
}

// find returns the point seq of the blob name.
func (t *Target) find(ctx context.Context, name string, seq uint64) (snap, error) {
	ss, err := t.snaps(ctx, name)
	if err != nil {
		return snap{}, err
	}
	for _, s := range ss {
		if s.p.Seq == seq {
			return s, nil
		}
	}
	return snap{}, fmt.Errorf("azure %s: point %d: %w", name, seq, targets.ErrNotFound)
}

// CreatePoint commits {p.Generation, p.Seq} and snapshots the blob with the
// point in the snapshot's metadata. A crash between the two leaves the
// state committed and no snapshot; the repeated CreatePoint makes it.
func (r *Replica) CreatePoint(ctx context.Context, p targets.Point) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return targets.ErrClosed
	}
	ss, err := r.snaps(ctx)
	if err != nil {
		return err
	}
	for _, s := range ss {
		if s.p.Seq == p.Seq {
			if samePoint(s.p, p) {
				return nil
			}
			return fmt.Errorf("azure %s: point %d: %w", r.name, p.Seq, targets.ErrPointExists)
		}
	}
	if p.Seq < r.st.Seq || len(ss) > 0 && p.Seq < ss[len(ss)-1].p.Seq {
		return fmt.Errorf("azure %s: point %d is older than the committed state %d or the newest point", r.name, p.Seq, r.st.Seq)
	}
	if err := r.setState(ctx, targets.State{Generation: p.Generation, Seq: p.Seq}); err != nil {
		return err
	}
	m := pointMetadata(p)
	m[metaSize] = strconv.FormatInt(r.info.Size, 10)
	m[metaVolumeID] = r.info.ID
	token := r.token
	if r.dirty || token == "" {
		token = uuid.NewString()
	}
	m[metaContent] = token
	if _, err := r.pb.CreateSnapshot(ctx, &blob.CreateSnapshotOptions{Metadata: toPtrMap(m), AccessConditions: r.ac()}); err != nil {
		return mapErr(fmt.Sprintf("azure %s: snapshot for point %d", r.name, p.Seq), err)
	}
	r.token, r.dirty = token, false
	return nil
}

// Points lists the recovery points, oldest first.
func (r *Replica) Points(ctx context.Context) ([]targets.Point, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	ss, err := r.snaps(ctx)
	if err != nil {
		return nil, err
	}
	ps := make([]targets.Point, len(ss))
	for i, s := range ss {
		ps[i] = s.p
	}
	return ps, nil
}

func (r *Replica) checkOpen() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return targets.ErrClosed
	}
	return nil
}

// OpenPoint returns a reader of the point's snapshot: ranged downloads,
// decrypted with a cipher; no copy.
func (r *Replica) OpenPoint(ctx context.Context, seq uint64) (targets.PointReader, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	s, err := r.find(ctx, seq)
	if err != nil {
		return nil, err
	}
	pb, err := r.pb.WithSnapshot(s.id)
	if err != nil {
		return nil, fmt.Errorf("azure %s: point %d: %w", r.name, seq, err)
	}
	return newPointReader(r, pb, s), nil
}

// DeletePoint deletes the point's snapshot.
func (r *Replica) DeletePoint(ctx context.Context, seq uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return targets.ErrClosed
	}
	s, err := r.find(ctx, seq)
	if err != nil {
		return err
	}
	pb, err := r.pb.WithSnapshot(s.id)
	if err != nil {
		return fmt.Errorf("azure %s: point %d: %w", r.name, seq, err)
	}
	_, err = pb.Delete(ctx, nil)
	return mapErr(fmt.Sprintf("azure %s: delete point %d", r.name, seq), err)
}

// Usage approximates the billed pages: the blob's page ranges plus, for
// each snapshot, the pages that differ from the next snapshot (or the blob)
// — the pages only that snapshot keeps. A snapshot whose content token
// equals the next one's (nothing was written between them) adds nothing
// and costs no request. On Azurite, whose Get Page Ranges Diff returns all
// ranges, a snapshot that differs from the next counts whole.
func (r *Replica) Usage(ctx context.Context) (int64, error) {
	if err := r.checkOpen(); err != nil {
		return 0, err
	}
	ss, err := r.snaps(ctx)
	if err != nil {
		return 0, err
	}
	total, err := pageBytes(ctx, r.pb, "")
	if err != nil {
		return 0, mapErr("azure usage of "+r.name, err)
	}
	r.mu.Lock()
	headToken := r.token
	if r.dirty {
		headToken = ""
	}
	r.mu.Unlock()
	for i, s := range ss {
		nextToken := headToken
		if i+1 < len(ss) {
			nextToken = ss[i+1].token
		}
		if s.token != "" && s.token == nextToken {
			continue
		}
		next := r.pb
		if i+1 < len(ss) {
			if next, err = r.pb.WithSnapshot(ss[i+1].id); err != nil {
				return 0, err
			}
		}
		n, err := pageBytes(ctx, next, s.id)
		if err != nil {
			return 0, mapErr("azure usage of "+r.name, err)
		}
		total += n
	}
	return total, nil
}

// pageBytes sums pb's page ranges, or with prev those changed since the
// snapshot prev.
func pageBytes(ctx context.Context, pb *pageblob.Client, prev string) (int64, error) {
	if prev == "" {
		return sumRanges(ctx, pb.NewGetPageRangesPager(nil), func(r pageblob.GetPageRangesResponse) []*pageblob.PageRange {
			return r.PageList.PageRange
		})
	}
	return sumRanges(ctx, pb.NewGetPageRangesDiffPager(&pageblob.GetPageRangesDiffOptions{PrevSnapshot: &prev}),
		func(r pageblob.GetPageRangesDiffResponse) []*pageblob.PageRange { return r.PageList.PageRange })
}

// sumRanges adds up the bytes of every page range a pager returns.
func sumRanges[T any](ctx context.Context, pager *runtime.Pager[T], ranges func(T) []*pageblob.PageRange) (int64, error) {
	var total int64
	for pager.More() {
		resp, err := pager.NextPage(ctx)
		if err != nil {
			return 0, err
		}
		for _, pr := range ranges(resp) {
			total += *pr.End - *pr.Start + 1
		}
	}
	return total, nil
}
