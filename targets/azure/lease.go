package azure

import (
	"context"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/lease"

	"lifeboat/targets"
)

// An open replica holds a lease on its blob, renewed in the background, so
// that a second process server's Open fails with targets.ErrInUse and its
// writes (which would lack the lease id) are refused by the service. A
// crashed process server's lease expires after leaseDuration.
const (
	leaseDuration = 60 // seconds, the longest finite lease
	leaseRenew    = 20 * time.Second
	leaseRetry    = 2 * time.Second // after a failed renewal
	// leaseRenewTimeout bounds one renewal (with the SDK's retries), so
	// that failed attempts cannot use up the lease's 60 s.
	leaseRenewTimeout = 8 * time.Second
)

// acquireLease takes the blob's lease and starts renewing it.
func (r *Replica) acquireLease(ctx context.Context) error {
	id := r.t.opts.LeaseID
	lc, err := lease.NewBlobClient(r.pb, &lease.BlobClientOptions{LeaseID: &id})
	if err != nil {
		return fmt.Errorf("azure lease %s: %w", r.name, err)
	}
	if _, err := lc.AcquireLease(ctx, leaseDuration, nil); err != nil {
		if !bloberror.HasCode(err, bloberror.LeaseAlreadyPresent) {
			return mapErr("azure lease "+r.name, err)
		}
		if !r.takeOver(ctx, id) {
			return fmt.Errorf("azure open %s: the blob is leased by another process server (its lease expires %d s after it stops; the same server restarted takes it back at once): %w", r.name, leaseDuration, targets.ErrInUse)
		}
	}
	r.lease, r.leaseID = lc, id
	r.stopRenew, r.renewDone = make(chan struct{}), make(chan struct{})
	go r.renew()
	return nil
}

// takeOver moves the blob's lease from this process server's previous run
// (Options.PreviousLeaseID) to id, and reports whether it could: after a
// crash the restarted server goes on at once, and any request of the old
// run still in flight is refused from then on.
func (r *Replica) takeOver(ctx context.Context, id string) bool {
	prev := r.t.opts.PreviousLeaseID
	if prev == "" || prev == id {
		return false
	}
	old, err := lease.NewBlobClient(r.pb, &lease.BlobClientOptions{LeaseID: &prev})
	if err != nil {
		return false
	}
	if _, err := old.ChangeLease(ctx, id, nil); err != nil {
		return false
	}
	r.t.log.Info("azure: took the replica's lease over from this process server's previous run", "blob", r.name)
	return true
}

func (r *Replica) renew() {
	defer close(r.renewDone)
	tick := time.NewTimer(leaseRenew)
	defer tick.Stop()
	for {
		select {
		case <-r.stopRenew:
			return
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), leaseRenewTimeout)
			_, err := r.lease.RenewLease(ctx, nil)
			cancel()
			if err != nil {
				// Retry soon: the lease must not lapse over a short outage
				// (a lapsed lease is renewed too, if nobody took it).
				r.t.log.Error("azure: renewing the replica's lease failed; writes will fail if it expires", "blob", r.name, "err", mapErr("renew lease", err))
				tick.Reset(leaseRetry)
				continue
			}
			tick.Reset(leaseRenew)
		}
	}
}

// releaseLease stops the renewal and releases the lease.
func (r *Replica) releaseLease() error {
	if r.lease == nil {
		return nil
	}
	close(r.stopRenew)
	<-r.renewDone
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := r.lease.ReleaseLease(ctx, nil)
	r.lease = nil
	return mapErr("azure release lease of "+r.name, err)
}

// ac are the access conditions of every write: the lease.
func (r *Replica) ac() *blob.AccessConditions {
	if r.leaseID == "" {
		return nil
	}
	return &blob.AccessConditions{LeaseAccessConditions: &blob.LeaseAccessConditions{LeaseID: &r.leaseID}}
}
