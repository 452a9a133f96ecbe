package azure

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"
	"github.com/google/uuid"

	"lifeboat/targets"
)

// FailoverFolder is the folder under the target's prefix that holds
// failover clones: PREFIX failover/NAME.vhd.
const FailoverFolder = "failover/"

// metaCloneOf is the clone's metadata key naming the replica blob it was
// copied from (the other keys are the point's, as on its snapshot).
const metaCloneOf = "lifeboatcloneof"

// Errors of failover clones.
var (
	ErrCloneExists    = errors.New("azure: a blob with the failover clone's name exists (pick another name, or delete that blob first)")
	ErrCloneEncrypted = errors.New("azure: the replica is encrypted on the site (AES-XTS): a server-side copy would hold ciphertext, which Azure cannot use as a disk; restore from the point through lifeboat instead")
	ErrCopyFailed     = errors.New("azure: the service's copy of the recovery point failed")
	// errCloneReplaced: the clone's blob holds another copy than ours.
	errCloneReplaced = errors.New("the failover clone's blob was replaced by another copy meanwhile")
)

// Copy polling: the first delay and the longest.
const (
	copyPollFirst = 100 * time.Millisecond
	copyPollMax   = 5 * time.Second
)

// cloneBlob is the blob name of the failover clone name: letters, digits,
// '.', '_' and '-', at most 200 of them, not starting with '.' or '-'; a
// ".vhd" suffix is allowed and not doubled.
func (t *Target) cloneBlob(name string) (string, error) {
	base := strings.TrimSuffix(name, ".vhd")
	ok := base != "" && len(base) <= 200 && base[0] != '.' && base[0] != '-' &&
		strings.IndexFunc(base, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
		}) < 0
	if !ok {
		return "", fmt.Errorf("azure clone: name %q: want 1 to 200 letters, digits, '.', '_' or '-', not starting with '.' or '-'", name)
	}
	return t.loc.Prefix + FailoverFolder + base + ".vhd", nil
}

// ClonePoint copies recovery point seq of volume volumeID to a new page
// blob PREFIX failover/NAME.vhd in the target's container and returns the
// new blob's URL (without any SAS token). The copy is done by the service
// (Start Copy From URL of the point's snapshot); ClonePoint waits for it to
// finish, or for ctx, which aborts the copy and deletes the partial clone.
//
// The clone is a fixed VHD (the replica's format), independent of the
// replica: it survives deleting the point and any later Apply, and Azure
// can make a managed disk from it. ClonePoint needs no replica open and
// takes no lease, so a failover can run while the process server that
// holds the replica is dead (its lease has not expired yet) or still
// applying. It never overwrites a blob: an existing name is ErrCloneExists.
// An unknown volume or seq is targets.ErrNotFound; an encrypted replica is
// ErrCloneEncrypted.
//
// Authorization: with a shared key the service authorizes reading the
// source (same account) by the copy request itself; with a SAS token the
// source URL carries the same token, which needs read permission.
func (t *Target) ClonePoint(ctx context.Context, volumeID string, seq uint64, name string) (string, error) {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return "", targets.ErrClosed
	}
	if _, err := uuid.Parse(volumeID); err != nil {
		return "", fmt.Errorf("azure clone: volume id %q is not a UUID: %v", volumeID, err)
	}
	dstName, err := t.cloneBlob(name)
	if err != nil {
		return "", err
	}
	src := t.blobName(volumeID)
	what := fmt.Sprintf("azure clone point %d of %s to %s", seq, src, dstName)
	srcPB := t.cont.NewPageBlobClient(src)
	props, err := srcPB.GetProperties(ctx, nil)
	if err != nil {
		return "", mapErr(what, err)
	}
	if _, _, kcv, err := parseStateMetadata(props.Metadata); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	} else if kcv != "" {
		return "", fmt.Errorf("%s: %w", what, ErrCloneEncrypted)
	}
	s, err := t.find(ctx, src, seq)
	if err != nil {
		return "", err
	}
	snapPB, err := srcPB.WithSnapshot(s.id)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	m := pointMetadata(s.p)
	m[metaVolumeID] = volumeID
	m[metaSize] = strconv.FormatInt(s.size, 10)
	m[metaCloneOf] = src
	dst := t.cont.NewPageBlobClient(dstName)
	resp, err := dst.BlobClient().StartCopyFromURL(ctx, snapPB.URL(), &blob.StartCopyFromURLOptions{
		Metadata:         toPtrMap(m),
		AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: ptr(azcore.ETagAny)}},
	})
	if bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet) {
		return "", fmt.Errorf("%s: %w", what, ErrCloneExists)
	}
	if err != nil {
		return "", mapErr(what, err)
	}
	copyID := deref(resp.CopyID)
	err = waitCopy(ctx, deref(resp.CopyStatus), "", func(ctx context.Context) (blob.CopyStatusType, string, error) {
		return copyStatus(ctx, dst, copyID)
	})
	if err != nil {
		if !errors.Is(err, errCloneReplaced) {
			t.dropClone(dst, copyID, err)
		}
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return stripQuery(dst.URL()), nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// copyStatus reads the clone's copy status; a blob whose copy is not
// copyID was replaced by someone else.
func copyStatus(ctx context.Context, dst *pageblob.Client, copyID string) (blob.CopyStatusType, string, error) {
	p, err := dst.GetProperties(ctx, nil)
	if err != nil {
		return "", "", mapErr("read copy status", err)
	}
	if id := deref(p.CopyID); copyID != "" && id != copyID {
		return "", "", fmt.Errorf("%w (copy id %q, ours %q)", errCloneReplaced, id, copyID)
	}
	return deref(p.CopyStatus), deref(p.CopyStatusDescription), nil
}

// waitCopy polls until the copy leaves the pending state (an empty status
// is pending too), with a delay doubling from copyPollFirst up to
// copyPollMax. Success is nil; failed or aborted is ErrCopyFailed with the
// service's description; ctx's end is ctx's error.
func waitCopy(ctx context.Context, status blob.CopyStatusType, desc string, poll func(context.Context) (blob.CopyStatusType, string, error)) error {
	delay := copyPollFirst
	for status == "" || status == blob.CopyStatusTypePending {
		select {
		case <-ctx.Done():
			return fmt.Errorf("copy still %s: %w", blob.CopyStatusTypePending, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, copyPollMax)
		var err error
		if status, desc, err = poll(ctx); err != nil {
			return err
		}
	}
	if status == blob.CopyStatusTypeSuccess {
		return nil
	}
	return fmt.Errorf("%w: status %s: %s", ErrCopyFailed, status, redactText(desc))
}

// dropClone aborts a copy that did not succeed and deletes its blob, so
// the name can be used again; failures are logged, the copy's error is
// what the caller sees.
func (t *Target) dropClone(dst *pageblob.Client, copyID string, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		if _, err := dst.AbortCopyFromURL(ctx, copyID, nil); err != nil && !bloberror.HasCode(err, bloberror.NoPendingCopyOperation) {
			t.log.Warn("azure: aborting the copy of a failover clone", "blob", stripQuery(dst.URL()), "err", mapErr("abort copy", err))
		}
	}
	if _, err := dst.Delete(ctx, nil); err != nil && !bloberror.HasCode(err, bloberror.BlobNotFound) {
		t.log.Warn("azure: deleting an unfinished failover clone", "blob", stripQuery(dst.URL()), "err", mapErr("delete clone", err))
	}
}
