package inboxkafka

// SetBeforeCommit makes c call f between the Set and the offset commit of
// each attempt, for tests that stop a consumer there. Call it before Run.
func SetBeforeCommit(c *Consumer, f func() error) { c.beforeCommit = f }

// SetOnSet makes c call f after each Set, with the number of its records
// and its error. Call it before Run.
func SetOnSet(c *Consumer, f func(records int, err error)) { c.onSet = f }
