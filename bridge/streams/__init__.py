"""The stream catalogue: what each upstream stream is (`kinds`: the four DropCopy streams;
`channels`: the Predexon channels) and every configured stream resolved once from the
settings (`catalogue`): its id, topic, schema, filters and transactional id."""
