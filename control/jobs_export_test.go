package control

// SetMaxJobsForTest sets how many jobs the store keeps; call the returned
// function to restore it.
func SetMaxJobsForTest(n uint64) func() {
	old := maxJobs
	maxJobs = n
	return func() { maxJobs = old }
}
