package targettest

import (
	"testing"

	"lifeboat/targets"
)

// testMachine: a replica records the machine it was created for, keeps it
// when another machine's agent opens it (the pipeline refuses that agent;
// the target must not quietly hand the volume over), reports it in Info
// and Volumes, and changes it only through SetMachine.
func testMachine(t *testing.T, open func(t *testing.T) targets.Target) {
	tg := open(t)
	t.Cleanup(func() { tg.Close() })
	info := volumeInfo("5e0c1a2b-3d4f-4a6b-8c9d-0e1f2a3b4c5d", 1<<20)
	info.Machine = "web01"
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	wantMachine(t, "after create", rep, tg, info.ID, "web01")
	if err := rep.Close(); err != nil {
		t.Fatal(err)
	}
	other := info
	other.Machine = "web02"
	if rep, err = tg.Open(ctx, other); err != nil {
		t.Fatal(err)
	}
	wantMachine(t, "opened for another machine", rep, tg, info.ID, "web01")
	if err := rep.SetMachine(ctx, "web02"); err != nil {
		t.Fatalf("SetMachine: %v", err)
	}
	wantMachine(t, "after SetMachine", rep, tg, info.ID, "web02")
	if err := rep.Close(); err != nil {
		t.Fatal(err)
	}
	if err := rep.SetMachine(ctx, "web03"); err == nil {
		t.Fatal("SetMachine after Close succeeded")
	}
}

// testMachineReopen: the machine survives a new Target on the same
// storage, and a replica that records none takes the opener's.
func testMachineReopen(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 40) // created without a machine, as earlier versions did
	e.randomApply(4)
	e.point()
	e.info.Machine = "db7"
	e.reopen()
	wantMachine(t, "replica without a machine, opened by db7", e.rep, e.tg, e.info.ID, "db7")
	if err := e.rep.SetMachine(ctx, "db8"); err != nil {
		t.Fatal(err)
	}
	e.reopen() // e.info still says db7: the replica's own record wins
	wantMachine(t, "after SetMachine and reopen", e.rep, e.tg, e.info.ID, "db8")
	e.checkAllPoints()
	e.checkLatest()
}

func wantMachine(t *testing.T, when string, rep targets.Replica, tg targets.Target, id, want string) {
	t.Helper()
	if got := rep.Info().Machine; got != want {
		t.Fatalf("%s: Info().Machine = %q, want %q", when, got, want)
	}
	vols, err := tg.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		if v.ID == id {
			if v.Machine != want {
				t.Fatalf("%s: Volumes() says machine %q, want %q", when, v.Machine, want)
			}
			return
		}
	}
	t.Fatalf("%s: Volumes() = %+v, no volume %s", when, vols, id)
}
