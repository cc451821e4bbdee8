package inbox

// SetClaimBudget sets the payload bytes a claim returns at most, for tests
// of the path that reads payloads one at a time, and returns a function
// that restores the previous budget.
func SetClaimBudget(n int64) (restore func()) {
	old := claimBudget.Swap(n)
	return func() { claimBudget.Store(old) }
}
