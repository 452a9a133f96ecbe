package azure

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/service"

	"lifeboat/targets"
)

// DefaultParallel is how many page blob requests a replica keeps in flight
// when Options.Parallel is 0.
const DefaultParallel = 8

// Errors of the Azure target that are permanent: retrying does not help.
var (
	ErrAuth              = errors.New("azure: authentication or authorization failed (check the account key or SAS token and its permissions)")
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
}

// Target keeps one page blob per volume in a container.
type Target struct {
	loc    Location
	opts   Options
	log    *slog.Logger
	cont   *container.Client
	mu     sync.Mutex
	open   map[string]bool // blob names of the replicas open in this Target
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
	if opts.Parallel == 0 {
		opts.Parallel = DefaultParallel
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
	return &Target{loc: loc, opts: opts, log: opts.Logger, cont: svc.NewContainerClient(loc.Container), open: map[string]bool{}}, nil
}

// Properties: page blobs take 512-byte pages, Put Page takes at most 4 MiB,
// and recovery points are blob snapshots.
func (t *Target) Properties() targets.Properties {
	return targets.Properties{Alignment: planPage, MaxExtent: MaxPutPage, Snapshots: true}
}

// blobName is the page blob of a volume.
func (t *Target) blobName(id string) string { return t.loc.Prefix + id + ".vhd" }

// Volumes lists the replicas under the target's prefix.
func (t *Target) Volumes(ctx context.Context) ([]targets.VolumeInfo, error) {
	var vols []targets.VolumeInfo
	pager := t.cont.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
		Prefix: &t.loc.Prefix, Include: container.ListBlobsInclude{Metadata: true}})
	for pager.More() {
		resp, err := pager.NextPage(ctx)
		if err != nil {
			return nil, mapErr("list replicas", err)
		}
		for _, it := range resp.Segment.BlobItems {
			if it.Name == nil || !strings.HasSuffix(*it.Name, ".vhd") {
				continue
			}
			info, _, _, err := parseStateMetadata(it.Metadata)
			if err != nil {
				t.log.Warn("azure: skipping a blob that is not a replica", "blob", *it.Name, "err", err)
				continue
			}
			vols = append(vols, info)
		}
	}
	return vols, nil
}

// Close marks the target closed. Open replicas stay usable until closed.
func (t *Target) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	return nil
}

func (t *Target) release(name string) {
	t.mu.Lock()
	delete(t.open, name)
	t.mu.Unlock()
}

// mapErr turns service errors into the package's permanent errors or the
// targets errors, keeping the service's message.
func mapErr(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case bloberror.HasCode(err, bloberror.ContainerNotFound):
		return fmt.Errorf("%s: %w: %v", what, ErrContainerNotFound, err)
	case bloberror.HasCode(err, bloberror.BlobNotFound, bloberror.ResourceNotFound):
		return fmt.Errorf("%s: %w", what, targets.ErrNotFound)
	case bloberror.HasCode(err, bloberror.ConditionNotMet, bloberror.SequenceNumberConditionNotMet, bloberror.LeaseIDMismatchWithBlobOperation, bloberror.LeaseIDMissing):
		return fmt.Errorf("%s: the blob changed under this process server: %w", what, targets.ErrInUse)
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) && (re.StatusCode == http.StatusForbidden || re.StatusCode == http.StatusUnauthorized) {
		return fmt.Errorf("%s: %w: %v", what, ErrAuth, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
