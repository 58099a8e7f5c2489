DROP FUNCTION enqueue_emails(text, boolean, text[], bytea[], text[], text[], text[], timestamptz[],
    integer[], text[], text[]);
