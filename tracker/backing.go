package tracker

// Large writes reach the backing store from a worker while the caller
// journals them, so the two copies of the data are made in parallel. The
// request holds its range lock until both are done, and its bitmap bits
// were persisted before either started, so the order between the two does
// not matter for crash safety.

// parallelWrite is the smallest write handed to a worker; below it the
// hand-off costs more than it saves.
const parallelWrite = 64 << 10

// backingWorkers is how many backing writes can run at once.
const backingWorkers = 4

type backingJob struct {
	p    []byte
	off  int64
	n    int
	err  error
	done chan struct{}
}

func (v *Volume) startBackingWorkers() {
	v.jobs = make(chan *backingJob)
	v.jobPool.New = func() any { return &backingJob{done: make(chan struct{}, 1)} }
	for range backingWorkers {
		v.wg.Add(1)
		go func() {
			defer v.wg.Done()
			for {
				select {
				case j := <-v.jobs:
					j.n, j.err = v.backing.WriteAt(j.p, j.off)
					j.done <- struct{}{}
				case <-v.done:
					return
				}
			}
		}()
	}
}

// writeBacking starts writing p at off to the backing store; wait returns
// the result. Small writes are done inline.
func (v *Volume) writeBacking(p []byte, off int64) *backingJob {
	j := v.jobPool.Get().(*backingJob)
	j.p, j.off = p, off
	if len(p) < parallelWrite {
		j.n, j.err = v.backing.WriteAt(p, off)
		j.done <- struct{}{}
		return j
	}
	select {
	case v.jobs <- j:
	case <-v.done:
		j.n, j.err = 0, ErrClosed
		j.done <- struct{}{}
	}
	return j
}

// wait returns the result of a backing write and recycles the job.
func (v *Volume) wait(j *backingJob) (int, error) {
	<-j.done
	n, err := j.n, j.err
	j.p = nil
	v.jobPool.Put(j)
	return n, err
}
