package azure

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/service"
	"github.com/google/uuid"

	"lifeboat/targets"
)

// DefaultParallel is how many page blob requests a replica keeps in flight
// when Options.Parallel is 0.
const DefaultParallel = 8

// Errors of the Azure target that are permanent: retrying does not help.
var (
	ErrAuth              = errors.New("azure: authentication or authorization failed (check the account key, or the SAS token's permissions and expiry)")
	ErrContainerNotFound = errors.New("azure: container not found (create it, or fix the target URL)")
)

// Options configure a Target.
type Options struct {
	// Parallel bounds the page blob requests one Apply keeps in flight
	// (DefaultParallel when 0).
	Parallel int
	// Cipher encrypts the replica's data at rest (AES-XTS over 4 KiB
	// sectors); nil stores plaintext.
	Cipher *SectorCipher
	// Logger receives the target's log records; nil is slog.Default().
	Logger *slog.Logger
	// MaxRetries and RetryDelay configure azblob's retry policy (throttling,
	// 5xx, timeouts): 0 means 5 retries from 500 ms, with exponential
	// backoff and jitter up to 30 s. MaxRetries < 0 disables retries.
	MaxRetries int
	RetryDelay time.Duration
	// ReadTimeout bounds one ReadAt of a recovery point; 0 is
	// DefaultReadTimeout plus a second per DefaultReadRate bytes read.
	ReadTimeout time.Duration
	// LeaseID is the id (a UUID) of the leases this target holds on its
	// open replicas; "" is a new random id. PreviousLeaseID, if set, is
	// the id of the previous run of the same process server: a replica
	// still leased under it (the run crashed) is taken over at once with
	// Change Lease instead of after the lease expires (up to a minute),
	// and the old id is refused from then on. Any other holder is
	// targets.ErrInUse.
	LeaseID         string
	PreviousLeaseID string
}

// Target keeps one page blob per volume in a container.
type Target struct {
	loc    Location
	opts   Options
	log    *slog.Logger
	cont   *container.Client
	mu     sync.Mutex
	open   map[string]*Replica // the replicas open in this Target, by blob name
	closed bool
}

var _ targets.Target = (*Target)(nil)

// New returns a target on loc. It does not contact the service; Open does.
func New(loc Location, creds Credentials, opts Options) (*Target, error) {
	if err := creds.Validate(); err != nil {
		return nil, err
	}
	if opts.Parallel < 0 {
		return nil, fmt.Errorf("azure target: Parallel %d: want 0 (default %d) or more", opts.Parallel, DefaultParallel)
	}
	if opts.ReadTimeout < 0 {
		return nil, fmt.Errorf("azure target: ReadTimeout %v: want 0 (the default) or more", opts.ReadTimeout)
	}
	if opts.Parallel == 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.LeaseID == "" {
		opts.LeaseID = uuid.NewString()
	}
	for _, id := range []string{opts.LeaseID, opts.PreviousLeaseID} {
		if _, err := uuid.Parse(id); err != nil && id != "" {
			return nil, fmt.Errorf("azure target: lease id %q is not a UUID", id)
		}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	retry := policy.RetryOptions{MaxRetries: 5, RetryDelay: 500 * time.Millisecond, MaxRetryDelay: 30 * time.Second}
	if opts.MaxRetries != 0 {
		retry.MaxRetries = int32(opts.MaxRetries)
	}
	if opts.RetryDelay != 0 {
		retry.RetryDelay = opts.RetryDelay
	}
	copts := &service.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: retry}}
	endpoint := strings.TrimSuffix(creds.Endpoint, "/") + "/"
	var svc *service.Client
	var err error
	if creds.Key != "" {
		cred, cerr := service.NewSharedKeyCredential(creds.Account, creds.Key)
		if cerr != nil {
			return nil, fmt.Errorf("%w: %v", ErrCredentials, cerr)
		}
		svc, err = service.NewClientWithSharedKeyCredential(endpoint, cred, copts)
	} else {
		svc, err = service.NewClientWithNoCredential(endpoint+"?"+creds.SAS, copts)
	}
	if err != nil {
		return nil, fmt.Errorf("azure target %s: %w", creds, err)
	}
	return &Target{loc: loc, opts: opts, log: opts.Logger, cont: svc.NewContainerClient(loc.Container), open: map[string]*Replica{}}, nil
}

// Properties: page blobs take 512-byte pages, Put Page takes at most 4 MiB,
// and recovery points are blob snapshots.
func (t *Target) Properties() targets.Properties {
	return targets.Properties{Alignment: planPage, MaxExtent: MaxPutPage, MaxSize: VHDMaxDataSize, Snapshots: true}
}

// blobName is the page blob of a volume.
func (t *Target) blobName(id string) string { return t.loc.Prefix + id + ".vhd" }

// Volumes lists the replicas directly under the target's prefix: blobs
// named PREFIX<volume id>.vhd whose metadata names that volume. Blobs in
// folders below the prefix (failover clones, anything else) are not
// listed, nor is a blob whose metadata names another volume.
func (t *Target) Volumes(ctx context.Context) ([]targets.VolumeInfo, error) {
	var vols []targets.VolumeInfo
	err := t.eachReplica(ctx, func(_ string, info targets.VolumeInfo, _ string) error {
		vols = append(vols, info)
		return nil
	})
	return vols, err
}

// eachReplica calls fn with the blob name, volume and key check value of
// every replica Volumes lists.
func (t *Target) eachReplica(ctx context.Context, fn func(name string, info targets.VolumeInfo, kcv string) error) error {
	pager := t.cont.NewListBlobsHierarchyPager("/", &container.ListBlobsHierarchyOptions{
		Prefix: &t.loc.Prefix, Include: container.ListBlobsInclude{Metadata: true}})
	for pager.More() {
		resp, err := pager.NextPage(ctx)
		if err != nil {
			return mapErr("list replicas", err)
		}
		for _, it := range resp.Segment.BlobItems {
			if it.Name == nil || !strings.HasSuffix(*it.Name, ".vhd") || strings.Contains(strings.TrimPrefix(*it.Name, t.loc.Prefix), "/") {
				continue
			}
			info, _, kcv, err := parseStateMetadata(it.Metadata)
			if err == nil && t.blobName(info.ID) != *it.Name {
				err = fmt.Errorf("its metadata names volume %s, whose replica is %s", info.ID, t.blobName(info.ID))
			}
			if err != nil {
				t.log.Warn("azure: skipping a blob that is not a replica", "blob", *it.Name, "err", err)
				continue
			}
			if err := fn(*it.Name, info, kcv); err != nil {
				return err
			}
		}
	}
	return nil
}

// CheckKeys checks that every replica can be opened with the target's key
// (or without one): a process server calls it at start so that a wrong or
// missing key fails there, not at the first segment.
func (t *Target) CheckKeys(ctx context.Context) error {
	return t.eachReplica(ctx, func(name string, _ targets.VolumeInfo, kcv string) error {
		return checkKey(name, t.opts.Cipher, kcv)
	})
}

// checkKey says whether a replica whose key check value is kcv opens with
// cipher c (nil: no encryption).
func checkKey(name string, c *SectorCipher, kcv string) error {
	switch {
	case c != nil && kcv == "":
		return fmt.Errorf("azure open %s: %w: the replica was written without encryption; give no key, or resync to a new container", name, ErrWrongKey)
	case c == nil && kcv != "":
		return fmt.Errorf("azure open %s: %w (key check value %s): give its key", name, ErrEncrypted, kcv)
	case c != nil:
		if err := c.CheckKey(kcv); err != nil {
			return fmt.Errorf("azure open %s: %w", name, err)
		}
	}
	return nil
}

// Close closes the replicas still open in the target (stopping their lease
// renewal and releasing their leases, so that another Target can open them
// at once) and refuses further Opens.
func (t *Target) Close() error {
	t.mu.Lock()
	t.closed = true
	open := slices.Collect(maps.Values(t.open))
	t.mu.Unlock()
	return targets.CloseAll(open)
}

// release forgets r, if it is the replica open under its name.
func (t *Target) release(r *Replica) {
	t.mu.Lock()
	if t.open[r.name] == r {
		delete(t.open, r.name)
	}
	t.mu.Unlock()
}
