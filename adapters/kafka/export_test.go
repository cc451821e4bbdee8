package inboxkafka

// SetBeforeCommit makes c call f between the Set and the offset commit of
// each attempt, for tests that stop a consumer there. Call it before Run.
func SetBeforeCommit(c *Consumer, f func() error) { c.beforeCommit = f }
