package azure_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// TestTargetCloseReleasesReplicas: closing a Target closes the replicas it
// still has open and releases their leases, so that a new Target (a
// restarted process server) opens them at once, not after the 60 s lease.
func TestTargetCloseReleasesReplicas(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	old := newTarget(t, s, cont, azure.Options{})
	infos := []targets.VolumeInfo{
		{ID: "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", Name: "a", Size: 1 << 20, BlockSize: 4096},
		{ID: "6b1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", Name: "b", Size: 1 << 20, BlockSize: 4096},
	}
	var reps []targets.Replica
	for _, info := range infos {
		rep, err := old.Open(ctx, info)
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 5}); err != nil {
			t.Fatal(err)
		}
		reps = append(reps, rep)
	}
	// While open, another Target is refused.
	other := newTarget(t, s, cont, azure.Options{})
	if _, err := other.Open(ctx, infos[0]); !errors.Is(err, targets.ErrInUse) {
		t.Fatalf("Open of a leased replica: %v, want ErrInUse", err)
	}
	if err := old.Close(); err != nil {
		t.Fatalf("Target.Close: %v", err)
	}
	for i, info := range infos {
		rep, err := other.Open(ctx, info)
		if err != nil {
			t.Fatalf("Open %s after the old Target closed: %v", info.Name, err)
		}
		if st, err := rep.State(ctx); err != nil || st.Seq != 5 {
			t.Fatalf("State = %+v, %v; want seq 5", st, err)
		}
		if err := reps[i].Apply(ctx, []targets.Extent{{Off: 0, Len: 4096}}); !errors.Is(err, targets.ErrClosed) {
			t.Fatalf("Apply on a replica of the closed Target: %v, want ErrClosed", err)
		}
		if err := reps[i].Close(); err != nil {
			t.Fatalf("Replica.Close after Target.Close: %v", err)
		}
		rep.Close()
	}
	if _, err := old.Open(ctx, infos[0]); !errors.Is(err, targets.ErrClosed) {
		t.Fatalf("Open on a closed Target: %v, want ErrClosed", err)
	}
}

// TestLeaseTakeoverAfterACrash: a process server that crashed (its Target
// never closed, its lease still held) and restarts with a new LeaseID and
// the crashed run's as PreviousLeaseID takes its replica back at once and
// goes on; the crashed run's writes are refused from then on; a server
// with any other id is refused before and after.
func TestLeaseTakeoverAfterACrash(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	const run1, run2 = "0f0e0d0c-0b0a-4909-8807-060504030201", "1f0e0d0c-0b0a-4909-8807-060504030201"
	if _, err := azure.New(azure.Location{Account: s.Account, Container: cont}, creds(s), azure.Options{PreviousLeaseID: "not-a-uuid"}); err == nil {
		t.Fatal("a lease id that is not a UUID was accepted")
	}
	crashed := newTarget(t, s, cont, azure.Options{LeaseID: run1})
	info := targets.VolumeInfo{ID: "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", Name: "a", Size: 1 << 20, BlockSize: 4096}
	old, err := crashed.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Commit(ctx, targets.State{Generation: 1, Seq: 9}); err != nil {
		t.Fatal(err)
	}
	// No Close: the process died with the lease held.
	if _, err := newTarget(t, s, cont, azure.Options{}).Open(ctx, info); !errors.Is(err, targets.ErrInUse) {
		t.Fatalf("another process server: %v, want ErrInUse", err)
	}
	restarted := newTarget(t, s, cont, azure.Options{LeaseID: run2, PreviousLeaseID: run1})
	rep, err := restarted.Open(ctx, info)
	if err != nil {
		t.Fatalf("the same process server restarted: %v", err)
	}
	if st, err := rep.State(ctx); err != nil || st.Seq != 9 {
		t.Fatalf("State = %+v, %v; want seq 9", st, err)
	}
	if err := rep.Apply(ctx, []targets.Extent{{Off: 0, Data: make([]byte, 4096)}}); err != nil {
		t.Fatal(err)
	}
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 10}); err != nil {
		t.Fatalf("Commit after taking the lease over: %v", err)
	}
	// A late request of the crashed run is refused.
	if err := old.Apply(ctx, []targets.Extent{{Off: 8192, Data: bytes.Repeat([]byte{0xee}, 4096)}}); !errors.Is(err, targets.ErrInUse) {
		t.Fatalf("Apply under the crashed run's lease after the takeover: %v, want ErrInUse", err)
	}
	if _, err := newTarget(t, s, cont, azure.Options{PreviousLeaseID: run1}).Open(ctx, info); !errors.Is(err, targets.ErrInUse) {
		t.Fatalf("a server claiming the old id after the takeover: %v, want ErrInUse", err)
	}
}
