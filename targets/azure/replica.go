package azure

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/lease"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"
	"github.com/google/uuid"

	"lifeboat/targets"
)

// Replica is one volume's page blob: the volume's data, zero padding up to
// VHDDataSize(info.Size), then the 512-byte VHD footer.
type Replica struct {
	t    *Target
	name string
	pb   *pageblob.Client

	mu      sync.Mutex // guards the fields below and serializes writers
	info    targets.VolumeInfo
	st      targets.State
	kcv     string
	etag    azcore.ETag // of the blob after our last metadata write
	planner Planner
	closed  bool
	// token names the content of the newest point this Replica made;
	// dirty is true once anything was written after it (or when unknown,
	// after Open). Points with equal tokens have equal content.
	token string
	dirty bool

	lease     *lease.BlobClient
	leaseID   string
	stopRenew chan struct{}
	renewDone chan struct{}
}

var _ targets.Replica = (*Replica)(nil)

func ptr[T any](v T) *T { return &v }

func toPtrMap(m map[string]string) map[string]*string {
	out := make(map[string]*string, len(m))
	for k, v := range m {
		out[k] = ptr(v)
	}
	return out
}

// blobSize is the page blob's size for a volume size.
func blobSize(volumeSize int64) int64 { return VHDDataSize(volumeSize) + FooterSize }

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// Open opens (creating when missing) the page blob of info.ID. A second
// Open of a replica open in this Target fails with targets.ErrInUse; across
// process servers, Commit's conditional metadata update detects the other
// writer (see Commit).
func (t *Target) Open(ctx context.Context, info targets.VolumeInfo) (targets.Replica, error) {
	vid, err := uuid.Parse(info.ID)
	if err != nil {
		return nil, fmt.Errorf("azure open: volume id %q is not a UUID: %v", info.ID, err)
	}
	if info.Size <= 0 || info.BlockSize <= 0 || info.BlockSize%planPage != 0 {
		return nil, fmt.Errorf("azure open %s: size %d, block size %d: want a positive size and a block size that is a multiple of %d", info.ID, info.Size, info.BlockSize, planPage)
	}
	name := t.blobName(info.ID)
	r := &Replica{t: t, name: name, pb: t.cont.NewPageBlobClient(name), info: info, dirty: true}
	// r.mu is held until r is open: a Target.Close meanwhile closes r
	// after the open, not during it.
	r.mu.Lock()
	defer r.mu.Unlock()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, targets.ErrClosed
	}
	if t.open[name] != nil {
		t.mu.Unlock()
		return nil, fmt.Errorf("azure open %s: %w", name, targets.ErrInUse)
	}
	t.open[name] = r
	t.mu.Unlock()
	if err := r.open(ctx, vid); err != nil {
		if lerr := r.releaseLease(); lerr != nil {
			t.log.Warn("azure: releasing the lease after a failed open", "blob", name, "err", lerr)
		}
		t.release(r)
		return nil, err
	}
	return r, nil
}

func (r *Replica) keyCheck() string {
	if c := r.t.opts.Cipher; c != nil {
		return c.KeyCheckValue()
	}
	return ""
}

func (r *Replica) open(ctx context.Context, vid uuid.UUID) error {
	props, err := r.pb.GetProperties(ctx, nil)
	if bloberror.HasCode(err, bloberror.BlobNotFound) {
		return r.create(ctx, vid)
	}
	if err != nil {
		return mapErr("azure open "+r.name, err)
	}
	info, st, kcv, err := parseStateMetadata(props.Metadata)
	if err != nil {
		return fmt.Errorf("azure open %s: %w", r.name, err)
	}
	if err := r.acquireLease(ctx); err != nil {
		return err
	}
	if info.ID != r.info.ID {
		return fmt.Errorf("azure open %s: the blob holds volume %s", r.name, info.ID)
	}
	if err := checkKey(r.name, r.t.opts.Cipher, kcv); err != nil {
		return err
	}
	r.st, r.kcv, r.etag = st, kcv, *props.ETag
	claim := info.Machine == "" && r.info.Machine != "" // made before machines were recorded
	if !claim {
		r.info.Machine = info.Machine // the owner is the replica's, not the opener's
	}
	if info.Size != r.info.Size || info.BlockSize != r.info.BlockSize || info.Name != r.info.Name {
		return r.resize(ctx, vid, info.Size, *props.ContentLength)
	}
	if claim {
		return r.setState(ctx, r.st)
	}
	return nil
}

// create makes the blob: state metadata at zero, the footer at the end.
func (r *Replica) create(ctx context.Context, vid uuid.UUID) error {
	r.kcv = r.keyCheck()
	size := blobSize(r.info.Size)
	_, err := r.pb.Create(ctx, size, &pageblob.CreateOptions{
		Metadata:         toPtrMap(stateMetadata(r.info, targets.State{}, r.kcv)),
		AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: ptr(azcore.ETagAny)}},
	})
	if err != nil {
		return mapErr("azure create "+r.name, err)
	}
	if err := r.acquireLease(ctx); err != nil {
		return err
	}
	if err := r.writeFooter(ctx, vid); err != nil {
		return err
	}
	return r.refreshETag(ctx)
}

func (r *Replica) writeFooter(ctx context.Context, vid uuid.UUID) error {
	f, err := NewFooter(vid, r.info.Size, time.Now())
	if err != nil {
		return fmt.Errorf("azure %s: %w", r.name, err)
	}
	b := EncodeFooter(f)
	off := VHDDataSize(r.info.Size)
	_, err = r.pb.UploadPages(ctx, nopCloser{bytes.NewReader(b[:])}, blob.HTTPRange{Offset: off, Count: FooterSize}, &pageblob.UploadPagesOptions{AccessConditions: r.ac()})
	return mapErr("azure write vhd footer of "+r.name, err)
}

func (r *Replica) refreshETag(ctx context.Context) error {
	props, err := r.pb.GetProperties(ctx, nil)
	if err != nil {
		return mapErr("azure "+r.name, err)
	}
	r.etag = *props.ETag
	return nil
}

// resize makes the blob fit r.info: new size, the range between the smaller
// volume size and the new footer cleared (so a grown volume reads zeros and
// no old footer is left in the data), the footer rewritten, the metadata
// updated. Points keep their own sizes.
func (r *Replica) resize(ctx context.Context, vid uuid.UUID, oldSize, oldBlob int64) error {
	newBlob := blobSize(r.info.Size)
	if newBlob != oldBlob {
		if _, err := r.pb.Resize(ctx, newBlob, &pageblob.ResizeOptions{AccessConditions: r.ac()}); err != nil {
			return mapErr("azure resize "+r.name, err)
		}
	}
	// Zero from the smaller size to the footer: the partial page or sector
	// there by read-modify-write, the rest by Clear Pages (with a cipher:
	// cleared where never written, encrypted zeros where written; see
	// encryptCalls), through the Apply path.
	from := min(oldSize, r.info.Size)
	if to := VHDDataSize(r.info.Size); from < to {
		if err := r.write(ctx, []targets.Extent{{Off: from, Len: to - from}}); err != nil {
			return fmt.Errorf("azure resize %s: %w", r.name, err)
		}
	}
	if err := r.writeFooter(ctx, vid); err != nil {
		return err
	}
	if err := r.refreshETag(ctx); err != nil {
		return err
	}
	return r.setState(ctx, r.st)
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// Info returns the volume the replica holds.
func (r *Replica) Info() targets.VolumeInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.info
}

// State returns the last committed state.
func (r *Replica) State(ctx context.Context) (targets.State, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return targets.State{}, targets.ErrClosed
	}
	return r.st, nil
}

// Commit records st in the blob's metadata. Page writes return before they
// are durable on Azure's side only in the sense of replication within the
// storage stamp: a successful Put Page is durable, so Commit only has to
// record the state.
//
// ETag handling: every Put Page changes the blob's ETag, so the ETag kept
// from our own last metadata write cannot be used as is. Commit reads the
// blob's properties, checks that its metadata still carries the state this
// replica last committed (another process server that committed since
// would have changed it), and sets the new metadata with If-Match on the
// ETag just read; a 412 (someone wrote in between) is targets.ErrInUse.
func (r *Replica) Commit(ctx context.Context, st targets.State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return targets.ErrClosed
	}
	return r.setState(ctx, st)
}

func (r *Replica) setState(ctx context.Context, st targets.State) error {
	props, err := r.pb.GetProperties(ctx, nil)
	if err != nil {
		return mapErr("azure commit "+r.name, err)
	}
	_, cur, _, err := parseStateMetadata(props.Metadata)
	if err != nil {
		return fmt.Errorf("azure commit %s: %w", r.name, err)
	}
	if cur != r.st {
		return fmt.Errorf("azure commit %s: the blob's state is %+v, this process server committed %+v: %w", r.name, cur, r.st, targets.ErrInUse)
	}
	resp, err := r.pb.SetMetadata(ctx, toPtrMap(stateMetadata(r.info, st, r.kcv)), &blob.SetMetadataOptions{
		AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: props.ETag},
			LeaseAccessConditions: &blob.LeaseAccessConditions{LeaseID: &r.leaseID}},
	})
	if err != nil {
		return mapErr("azure commit "+r.name, err)
	}
	r.st, r.etag = st, *resp.ETag
	return nil
}

// SetMachine records the volume's owner in the blob's metadata, with the
// same conditions as Commit.
func (r *Replica) SetMachine(ctx context.Context, machine string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return targets.ErrClosed
	}
	old := r.info.Machine
	r.info.Machine = machine
	if err := r.setState(ctx, r.st); err != nil {
		r.info.Machine = old
		return err
	}
	return nil
}

// Close releases the replica in its Target. A second Close is a no-op.
func (r *Replica) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.releaseLease()
	r.t.release(r)
	return err
}
