package targettest

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/targets"
)

func testPoints(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 10)
	e.randomApply(30) // initial content, before any point
	var readers []targets.PointReader
	for range 6 {
		p := e.point()
		pr, err := e.rep.OpenPoint(ctx, p.Seq)
		if err != nil {
			t.Fatal(err)
		}
		readers = append(readers, pr)
		for range 1 + e.rng.IntN(4) {
			e.randomApply(1 + e.rng.IntN(12))
		}
		// Readers opened earlier still read their point.
		for _, pr := range readers {
			checkReader(t, pr, e.points[pr.Point().Seq], e.rng)
		}
	}
	ps, err := e.rep.Points(ctx)
	if err != nil || len(ps) != 6 {
		t.Fatalf("Points = %v, %v; want 6", ps, err)
	}
	for i := 1; i < len(ps); i++ {
		if ps[i].Seq <= ps[i-1].Seq {
			t.Fatalf("Points not oldest first: %v", ps)
		}
	}
	e.checkAllPoints()
	e.checkLatest()
	if st, _ := e.rep.State(ctx); st.Seq != e.seq {
		t.Fatalf("State after CreatePoint = %+v, want seq %d", st, e.seq)
	}
}

// testConcurrentReads reads points from other goroutines while Apply,
// CreatePoint and DeletePoint go on.
func testConcurrentReads(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 11)
	e.randomApply(20)
	p1 := e.point()
	e.randomApply(10)
	p2 := e.point()
	want1, want2 := e.points[p1.Seq], e.points[p2.Seq]
	stop := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for i, seq := range []uint64{p1.Seq, p2.Seq, p1.Seq} {
		want := want1
		if seq == p2.Seq {
			want = want2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 99))
			pr, err := e.rep.OpenPoint(ctx, seq)
			if err != nil {
				errs <- err
				return
			}
			defer pr.Close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := compareReader(pr, want, r); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 12 {
		e.randomApply(10)
		if e.rng.IntN(3) == 0 {
			p := e.point()
			e.randomApply(5)
			if err := e.rep.DeletePoint(ctx, p.Seq); err != nil {
				t.Fatal(err)
			}
			delete(e.points, p.Seq)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent reader: %v", err)
	}
	e.checkAllPoints()
}

func testIdempotent(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 12)
	e.randomApply(10)
	p := e.point()
	if err := e.rep.CreatePoint(ctx, p); err != nil {
		t.Fatalf("CreatePoint of the same point again: %v", err)
	}
	// The replay of a tag after a crash carries the same time in another
	// location; it is the same point.
	same := p
	same.Time = p.Time.In(time.FixedZone("CEST", 2*3600))
	if err := e.rep.CreatePoint(ctx, same); err != nil {
		t.Fatalf("CreatePoint of the same point in another zone: %v", err)
	}
	for _, c := range []func(*targets.Point){
		func(q *targets.Point) { q.Generation++ },
		func(q *targets.Point) { q.Name += "x" },
		func(q *targets.Point) { q.Kind = hrl.TagApp },
		func(q *targets.Point) { q.Time = q.Time.Add(time.Nanosecond) },
	} {
		q := p
		c(&q)
		err := e.rep.CreatePoint(ctx, q)
		wantErr(t, "CreatePoint of a different point with the same seq", err, targets.ErrPointExists)
	}
	ps, err := e.rep.Points(ctx)
	if err != nil || len(ps) != 1 || !targets.SamePoint(ps[0], p) {
		t.Fatalf("Points = %v, %v; want just %v", ps, err, p)
	}
	e.randomApply(10)
	if err := e.rep.CreatePoint(ctx, p); err != nil {
		t.Fatalf("CreatePoint of the same point after more applies: %v", err)
	}
	e.checkAllPoints() // the repeat did not move the point
	if st, _ := e.rep.State(ctx); st.Seq != p.Seq {
		t.Fatalf("State = %+v, want seq %d (the repeat changes nothing)", st, p.Seq)
	}
}

// testPointFields checks that Points returns every field as created; Time
// round-trips to the nanosecond (compared with time.Time.Equal).
func testPointFields(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 13)
	zone := time.FixedZone("UTC-7", -7*3600)
	want := []targets.Point{
		{Seq: 5, Generation: 1, Kind: hrl.TagCrash, Name: "crash", Time: time.Date(2024, 2, 29, 23, 59, 59, 123456789, zone)},
		{Seq: 9, Generation: 2, Kind: hrl.TagApp, Name: "app: før backup ✓", Time: time.Date(2025, 1, 1, 0, 0, 0, 1, time.UTC)},
		{Seq: 1 << 40, Generation: 1 << 33, Kind: hrl.TagGroup, Name: "", Time: time.Unix(0, 0)},
	}
	for _, p := range want {
		e.randomApply(3)
		if err := e.rep.CreatePoint(ctx, p); err != nil {
			t.Fatal(err)
		}
		if st, err := e.rep.State(ctx); err != nil || st != (targets.State{Generation: p.Generation, Seq: p.Seq}) {
			t.Fatalf("State after CreatePoint %d = %+v, %v", p.Seq, st, err)
		}
		pr, err := e.rep.OpenPoint(ctx, p.Seq)
		if err != nil {
			t.Fatal(err)
		}
		if !targets.SamePoint(pr.Point(), p) {
			t.Fatalf("PointReader.Point() = %+v, want %+v", pr.Point(), p)
		}
		pr.Close()
	}
	got, err := e.rep.Points(ctx)
	if err != nil || len(got) != len(want) {
		t.Fatalf("Points = %v, %v", got, err)
	}
	for i := range want {
		if !targets.SamePoint(got[i], want[i]) {
			t.Fatalf("point %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	// A point must not go behind the newest one or the committed state.
	if err := e.rep.CreatePoint(ctx, targets.Point{Seq: 7, Generation: 2, Kind: hrl.TagCrash}); err == nil {
		t.Fatal("CreatePoint older than the newest point succeeded")
	}
	if err := e.rep.Commit(ctx, targets.State{Generation: 1 << 33, Seq: 1<<40 + 10}); err != nil {
		t.Fatal(err)
	}
	if err := e.rep.CreatePoint(ctx, targets.Point{Seq: 1<<40 + 5, Generation: 1 << 33, Kind: hrl.TagCrash}); err == nil {
		t.Fatal("CreatePoint older than the committed state succeeded")
	}
}
