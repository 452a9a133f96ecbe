package azure

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"
	"github.com/google/uuid"

	"lifeboat/targets"
)

var _ targets.DiskCloner = (*Target)(nil)

// cloneChunk is the size of one Put Page of a decrypted clone (the
// service's largest).
const cloneChunk = 4 << 20

// CloneDisk makes a page blob PREFIX failover/NAME.vhd that Azure can turn
// into a managed disk, holding point p of volume volumeID in plaintext: a
// server-side copy of the point's snapshot when the replica is not
// encrypted (ClonePoint), otherwise an upload of p's plaintext (read
// through the site's key), all-zero chunks skipped, with the VHD footer.
// progress is called after each chunk with the bytes done and the total.
// An unfinished clone is deleted. A finished clone of the same point of
// the same volume under that name is reused (a retried failover); any
// other blob with the name is ErrCloneExists.
func (t *Target) CloneDisk(ctx context.Context, p targets.PointReader, volumeID, name string, progress func(done, total int64)) (string, error) {
	u, err := t.ClonePoint(ctx, volumeID, p.Point().Seq, name)
	if errors.Is(err, ErrCloneEncrypted) {
		u, err = t.cloneDecrypted(ctx, p, volumeID, name, progress)
	}
	if errors.Is(err, ErrCloneExists) {
		if ru, rerr := t.reuseClone(ctx, p, volumeID, name); rerr == nil {
			t.log.Info("azure: a finished clone of this point exists; reused", "blob", ru)
			u, err = ru, nil
		}
	}
	if err == nil && progress != nil {
		progress(p.Size(), p.Size())
	}
	return u, err
}

// reuseClone returns the URL of the blob named for clone name when it is a
// finished clone of p of volume volumeID: its metadata names the volume's
// blob, the point and the size, and a server-side copy of it succeeded
// or, for an upload, its VHD footer (written last) is in place.
func (t *Target) reuseClone(ctx context.Context, p targets.PointReader, volumeID, name string) (string, error) {
	dstName, err := t.cloneBlob(name)
	if err != nil {
		return "", err
	}
	dst := t.cont.NewPageBlobClient(dstName)
	props, err := dst.GetProperties(ctx, nil)
	if err != nil {
		return "", mapErr("azure clone "+dstName, err)
	}
	seq, _ := get(props.Metadata, metaSeq)
	of, _ := get(props.Metadata, metaCloneOf)
	size, _ := get(props.Metadata, metaSize)
	if of != t.blobName(volumeID) || seq != strconv.FormatUint(p.Point().Seq, 10) || size != strconv.FormatInt(p.Size(), 10) {
		return "", ErrCloneExists
	}
	if st := deref(props.CopyStatus); st != "" {
		if st != blob.CopyStatusTypeSuccess {
			return "", ErrCloneExists
		}
		return stripQuery(dst.URL()), nil
	}
	fb := make([]byte, FooterSize)
	if err := readBlobAt(ctx, dst, fb, VHDDataSize(p.Size())); err != nil {
		return "", err
	}
	if f, err := DecodeFooter(fb); err != nil || f.CurrentSize != VHDDataSize(p.Size()) {
		return "", ErrCloneExists // an upload that did not finish
	}
	return stripQuery(dst.URL()), nil
}

// readBlobAt reads len(b) bytes of a page blob at off.
func readBlobAt(ctx context.Context, pb *pageblob.Client, b []byte, off int64) error {
	resp, err := pb.DownloadStream(ctx, &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: off, Count: int64(len(b))}})
	if err != nil {
		return mapErr("azure read clone", err)
	}
	defer resp.Body.Close()
	_, err = io.ReadFull(resp.Body, b)
	return err
}

// cloneDecrypted uploads p's plaintext to a new fixed-VHD page blob.
func (t *Target) cloneDecrypted(ctx context.Context, p targets.PointReader, volumeID, name string, progress func(done, total int64)) (string, error) {
	vid, err := uuid.Parse(volumeID)
	if err != nil {
		return "", fmt.Errorf("azure clone: volume id %q is not a UUID: %v", volumeID, err)
	}
	dstName, err := t.cloneBlob(name)
	if err != nil {
		return "", err
	}
	size := p.Size()
	what := fmt.Sprintf("azure decrypted clone of point %d of %s to %s", p.Point().Seq, volumeID, dstName)
	m := pointMetadata(p.Point())
	m[metaVolumeID] = volumeID
	m[metaSize] = strconv.FormatInt(size, 10)
	m[metaCloneOf] = t.blobName(volumeID)
	dst := t.cont.NewPageBlobClient(dstName)
	_, err = dst.Create(ctx, blobSize(size), &pageblob.CreateOptions{Metadata: toPtrMap(m),
		AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: ptr(azcore.ETagAny)}}})
	if bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet) {
		return "", fmt.Errorf("%s: %w", what, ErrCloneExists)
	}
	if err != nil {
		return "", mapErr(what, err)
	}
	if err := t.uploadPlain(ctx, dst, p, vid, progress); err != nil {
		t.dropClone(dst, "", err)
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return stripQuery(dst.URL()), nil
}

// uploadPlain writes p's non-zero chunks (Options.Parallel at a time)
// and the VHD footer to dst.
func (t *Target) uploadPlain(ctx context.Context, dst *pageblob.Client, p targets.PointReader, vid uuid.UUID, progress func(done, total int64)) error {
	size := p.Size()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	offs := make(chan int64)
	var done atomic.Int64
	var wg sync.WaitGroup
	for range max(t.opts.Parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, cloneChunk)
			for off := range offs {
				if err := uploadChunk(ctx, dst, p, buf, off, size); err != nil {
					cancel(err)
					return
				}
				done.Add(min(cloneChunk, size-off))
			}
		}()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
feed:
	for off := int64(0); off < size; off += cloneChunk {
		select {
		case offs <- off:
		case <-ctx.Done():
			break feed
		case <-tick.C:
			if progress != nil {
				progress(done.Load(), size)
			}
			off -= cloneChunk // not sent: again
		}
	}
	close(offs)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	if progress != nil {
		progress(size, size)
	}
	f, err := NewFooter(vid, size, time.Now())
	if err != nil {
		return err
	}
	fb := EncodeFooter(f)
	_, err = dst.UploadPages(ctx, nopCloser{bytes.NewReader(fb[:])}, blob.HTTPRange{Offset: VHDDataSize(size), Count: FooterSize}, nil)
	return mapErr("write the vhd footer", err)
}

// uploadChunk reads the chunk of p at off and writes it to dst unless it
// is all zeros (a new page blob reads as zeros).
func uploadChunk(ctx context.Context, dst *pageblob.Client, p targets.PointReader, buf []byte, off, size int64) error {
	n := min(cloneChunk, size-off)
	b := buf[:n]
	if _, err := p.ReadAt(b, off); err != nil && !(errors.Is(err, io.EOF) && off+n == size) {
		return fmt.Errorf("read the point at %d: %w", off, err)
	}
	if allZero(b) {
		return nil
	}
	if pn := alignUp(n, 512); pn != n { // the last chunk of a volume may be short of a page
		b = append(b[:n:n], make([]byte, pn-n)...)
	}
	_, err := dst.UploadPages(ctx, nopCloser{bytes.NewReader(b)}, blob.HTTPRange{Offset: off, Count: int64(len(b))}, nil)
	return mapErr(fmt.Sprintf("upload at %d", off), err)
}
